using Spectre.Console;

namespace Rlhf.Training.Common;

/// <summary>
/// The step loop every trainer shares: the progress bar, the NaN guard, the checkpoint cadence (every
/// <c>checkpoint_every</c> steps and the last), one <see cref="StageEvent"/> per step, and cancellation at a step
/// boundary with the checkpoint of that step written first. Every step's metrics row also goes to the stage's
/// TensorBoard event file (<see cref="TensorBoardLog"/>). A trainer supplies what one step does and how its checkpoint is saved.
/// </summary>
public sealed class StageSteps(string stage, string outFolder, int total, int start, int checkpointEvery, string? resumedFrom, RunControl control)
{
    Action<int>? _progress;
    readonly TensorBoardLog _tensorBoard = new(outFolder);

    /// <summary>The stage's name in events and errors ("sft", "rm", "ppo").</summary>
    public string Stage { get; } = stage;
    /// <summary>Steps of the whole stage.</summary>
    public int Total { get; } = total;
    /// <summary>The first step this run takes (0, or the resumed checkpoint's step).</summary>
    public int Start { get; } = start;
    /// <summary>The newest checkpoint folder (null until one exists).</summary>
    public string? LastCheckpoint { get; private set; } = resumedFrom;

    /// <summary>Runs <paramref name="steps"/> (the trainer's loop over steps <see cref="Start"/> … <see cref="Total"/> − 1, each ending in <see cref="EndStep"/>) under a progress bar labelled <paramref name="label"/>.</summary>
    public void Run(string label, Action steps) =>
        WithProgress(label, Total, Start, control.Progress, onStep =>
        {
            _progress = onStep;
            steps();
        });

    /// <summary>The NaN guard: a non-finite <paramref name="value"/> stops the run and leaves the last checkpoint as it was.</summary>
    public void CheckFinite(int step, string what, double value)
    {
        if (!double.IsFinite(value)) throw new NonFiniteLossException(Stage, step, what, value, LastCheckpoint);
    }

    /// <summary>
    /// Ends step <paramref name="done"/> (1-based): adds <paramref name="row"/> to <paramref name="metrics"/>, saves a
    /// checkpoint (and metrics.csv) when the cadence says so or the step is the stage's last (<paramref name="final"/>:
    /// it stops early), reports the step, and stops with <see cref="StageCancelledException"/> when cancellation was
    /// asked for (saving this step's checkpoint first).
    /// </summary>
    public void EndStep(int done, Dictionary<string, double> row, MetricsTable metrics, Func<string> saveCheckpoint, bool final = false)
    {
        metrics.Add(row);
        _tensorBoard.Add(done, row);
        final |= done == Total;
        bool due = (checkpointEvery > 0 && done % checkpointEvery == 0) || final;
        if (due) Save(metrics, saveCheckpoint);
        _progress?.Invoke(done);
        control.OnStep?.Invoke(new StageEvent(Stage, done, Total, row));
        if (!final && control.Cancel.IsCancellationRequested)
        {
            if (!due) Save(metrics, saveCheckpoint);
            throw new StageCancelledException(Stage, done, LastCheckpoint!);
        }
    }

    void Save(MetricsTable metrics, Func<string> saveCheckpoint)
    {
        LastCheckpoint = saveCheckpoint();
        metrics.WriteCsv(Path.Combine(outFolder, "metrics.csv"));
    }

    /// <summary>
    /// Runs <paramref name="body"/> (which reports progress through its callback) under a Spectre.Console progress bar
    /// when the console is interactive, or plainly otherwise.
    /// </summary>
    static void WithProgress(string label, int total, int start, bool show, Action<Action<int>?> body)
    {
        if (!show || Console.IsOutputRedirected || Console.IsErrorRedirected)
        {
            body(null);
            return;
        }
        AnsiConsole.Progress().AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(label, maxValue: total);
                task.Value = start;
                body(s => task.Value = s);
            });
    }
}
