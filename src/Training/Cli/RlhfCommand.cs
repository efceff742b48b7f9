using System.CommandLine;
using Rlhf.Training.Common;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Cli;

/// <summary>The <c>rlhf</c> command line: one sub-command per stage or tool.</summary>
internal static class RlhfCommand
{
    /// <summary>Shows stack traces of failures (any command).</summary>
    static readonly Option<bool> Verbose = new("--verbose") { Description = "Print the stack trace of a failure.", Recursive = true };

    /// <summary>Set by <see cref="Run"/> for <see cref="Guard"/> (an async-local, so in-process runs do not share it).</summary>
    static readonly AsyncLocal<bool> verbose = new();

    /// <summary>
    /// Parses and runs; returns the process exit code: 0 ok, 1 the command failed, 2 the command line is wrong. Every
    /// failure prints one line <c>error: …</c> on stderr (stack traces only with <c>--verbose</c>).
    /// </summary>
    public static int Run(string[] args)
    {
        var root = new RootCommand(
            "Rlhf: InstructGPT-style alignment of causal language models (SFT -> reward model -> PPO with a KL penalty). " +
            "TorchSharp computes every gradient; ONNX Runtime generates and scores.")
        {
            SftCommand.Create(),
            RmCommand.Create(),
            PpoCommand.Create(),
            DpoCommand.Create(),
            PipelineCommand.Create(),
            CompareCommand.Create(),
            GenerateCommand.Create(),
            DataCommand.Create(),
            ScoreCommand.Create(),
            ExportCommand.Create(),
            MergeCommand.Create(),
            BenchCommand.Create(),
            ServeTrainCommand.Serve(),
        };
        root.Options.Add(Verbose);
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            string command = string.Join(' ', CommandPath(parsed.CommandResult));
            Console.Error.WriteLine($"error: {ErrorLines.OneLine(string.Join(" ", parsed.Errors.Select(e => e.Message)))} " +
                                    $"(see: rlhf {(command.Length > 0 ? command + " " : "")}--help)");
            return 2;
        }
        verbose.Value = parsed.GetValue(Verbose);
        try { return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false }); }
        catch (Exception e) { return Fail(e); }   // a command that did not go through Guard
    }

    /// <summary>
    /// Runs a stage and prints its summary as JSON. The first Ctrl+C stops it at the next step boundary with that
    /// step's checkpoint written (continue with --resume); a second one ends the process.
    /// </summary>
    public static int RunStage(Pipeline.IStage stage, bool resume, bool overwrite)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            if (cts.IsCancellationRequested) return;
            e.Cancel = true;
            cts.Cancel();
            Console.Error.WriteLine("Stopping at the next step boundary (its checkpoint is kept); Ctrl+C again ends at once.");
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var summary = stage.Run(new RunControl { Resume = resume, Overwrite = overwrite, Cancel = cts.Token });
            Console.WriteLine(summary.ToJsonString(ConfigLoader.Json));
            return 0;
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }

    /// <summary>Runs a command body; a failure becomes one <c>error: …</c> line on stderr and exit code 1.</summary>
    public static int Guard(Func<int> body)
    {
        try { return body(); }
        catch (Exception e) { return Fail(e); }
    }

    /// <summary>Prints <paramref name="e"/> as one error line (and its stack trace with --verbose); returns 1.</summary>
    static int Fail(Exception e)
    {
        Console.Error.WriteLine(ErrorLines.For(e));
        if (verbose.Value) Console.Error.WriteLine(e.ToString());
        return 1;
    }

    static IEnumerable<string> CommandPath(System.CommandLine.Parsing.CommandResult r)
    {
        var names = new List<string>();
        for (var c = r; c is not null && c.Parent is System.CommandLine.Parsing.CommandResult; c = c.Parent as System.CommandLine.Parsing.CommandResult)
            names.Insert(0, c.Command.Name);
        return names;
    }
}

/// <summary>Options shared by the training stages: config file, key=value overrides, device, resume.</summary>
internal sealed class StageOptions
{
    public Option<string?> Config { get; } = new("--config") { Description = "JSON config file (snake_case keys; see docs/configuration.md). Command-line options override it." };
    public Option<string[]> Set { get; } = new("--set") { Description = "Override any config key: --set lr=1e-3 --set decay=linear (repeatable).", AllowMultipleArgumentsPerToken = false };
    public Option<string?> Out { get; } = new("--out") { Description = "Output folder." };
    public Option<string?> Device { get; } = new("--device") { Description = "cpu or cuda (cuda needs the GPU build, see docs/troubleshooting.md)." };
    public Option<int?> Threads { get; } = new("--threads") { Description = "Intra-op threads (0 = all cores)." };
    public Option<long?> Seed { get; } = new("--seed") { Description = "Seed for data order, initialisation, dropout and sampling." };
    public Option<bool> Resume { get; } = new("--resume") { Description = "Continue from the checkpoint in the output folder." };
    public Option<bool> Overwrite { get; } = new("--overwrite") { Description = "Replace a non-empty output folder." };

    public void AddTo(Command c)
    {
        foreach (Option o in new Option[] { Config, Set, Out, Device, Threads, Seed, Resume, Overwrite }) c.Options.Add(o);
    }

    /// <summary>Typed options as key=value overrides (after --set, so typed options win).</summary>
    public List<string> Overrides(ParseResult r)
    {
        var list = new List<string>(r.GetValue(Set) ?? []);
        if (r.GetValue(Out) is string o) list.Add($"out={Quote(o)}");
        if (r.GetValue(Device) is string d) list.Add($"device={Quote(d)}");
        if (r.GetValue(Threads) is int t) list.Add($"threads={t}");
        if (r.GetValue(Seed) is long s) list.Add($"seed={s}");
        return list;
    }

    /// <summary>A string as a JSON literal for an override.</summary>
    public static string Quote(string s) => System.Text.Json.JsonSerializer.Serialize(s);
}
