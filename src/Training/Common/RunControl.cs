using Microsoft.Extensions.Logging;

namespace Rlhf.Training.Common;

/// <summary>How a stage is driven (by the CLI or the training server), apart from its config.</summary>
public sealed record RunControl
{
    /// <summary>Continue from the output folder's checkpoint.</summary>
    public bool Resume { get; init; }
    /// <summary>Replace a non-empty output folder.</summary>
    public bool Overwrite { get; init; }
    /// <summary>Show a progress bar (only on an interactive console).</summary>
    public bool Progress { get; init; } = true;
    /// <summary>
    /// Stops the stage at the next step boundary: a checkpoint of that step is written (unless the cadence just wrote
    /// it), then <see cref="StageCancelledException"/> is thrown. A resumed run continues exactly.
    /// </summary>
    public CancellationToken Cancel { get; init; }
    /// <summary>Called after every step (optimizer step or PPO iteration) with its metrics row.</summary>
    public Action<StageEvent>? OnStep { get; init; }
    /// <summary>Where the stage's messages go (default: one plain line each on stderr).</summary>
    public ILogger Logger { get; init; } = StageLog.Stderr;
}

/// <summary>One finished step of a stage: its number (1-based), the stage's total, and the metrics row it added.</summary>
public sealed record StageEvent(string Stage, int Step, int Total, IReadOnlyDictionary<string, double> Row);

/// <summary>Thrown when a stage stops at a step boundary because its <see cref="RunControl.Cancel"/> token was cancelled.</summary>
public sealed class StageCancelledException(string stage, int step, string checkpoint)
    : OperationCanceledException($"{stage}: cancelled after step {step}; the checkpoint at {checkpoint} holds it (continue with --resume).")
{
    /// <summary>The stage ("sft", "rm", "ppo").</summary>
    public string Stage { get; } = stage;
    /// <summary>Steps done (the checkpoint's step).</summary>
    public int Step { get; } = step;
}

/// <summary>
/// The logger a stage's messages go to: <see cref="RunControl.Logger"/> of the running stage (an async-local, so
/// helpers deep inside a trainer need no logger parameter and concurrent in-process runs do not mix).
/// </summary>
public static class StageLog
{
    static readonly AsyncLocal<ILogger?> current = new();

    /// <summary>Plain lines on stderr, as the CLI prints them.</summary>
    public static ILogger Stderr { get; } = new PlainLogger(null);   // Console.Error as it is at each write (tests redirect it)

    /// <summary>Routes <see cref="Info"/> to <paramref name="logger"/> until the result is disposed.</summary>
    public static IDisposable Use(ILogger logger)
    {
        var outer = current.Value;
        current.Value = logger;
        return new Restore(() => current.Value = outer);
    }

    /// <summary>An informational message of the running stage.</summary>
    public static void Info(string message)
    {
#pragma warning disable CA2254 // the message is already formatted text, not a template
        (current.Value ?? Stderr).LogInformation(message);
#pragma warning restore CA2254
    }

    sealed class Restore(Action undo) : IDisposable
    {
        public void Dispose() => undo();
    }

    /// <summary>Writes each message as one line (no level or category prefix) to a text writer.</summary>
    public sealed class PlainLogger(TextWriter? writer) : ILogger
    {
        /// <inheritdoc/>
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        /// <inheritdoc/>
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;
        /// <inheritdoc/>
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel)) (writer ?? Console.Error).WriteLine(formatter(state, exception));
        }
    }
}
