using System.CommandLine;
using Rlhf.Training.Common;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Cli;

/// <summary>The <c>rlhf</c> command line: one sub-command per stage or tool.</summary>
internal static class RlhfCommand
{
    /// <summary>Parses and runs; returns the process exit code (0 ok, 1 error, 2 usage).</summary>
    public static int Run(string[] args)
    {
        var root = new RootCommand(
            "Rlhf: InstructGPT-style alignment of causal language models (SFT -> reward model -> PPO with a KL penalty). " +
            "TorchSharp computes every gradient; ONNX Runtime generates and scores.")
        {
            SftCommand.Create(),
            RmCommand.Create(),
            PpoCommand.Create(),
            PipelineCommand.Create(),
            GenerateCommand.Create(),
            DataCommand.Create(),
            ScoreCommand.Create(),
            ExportCommand.Create(),
            BenchCommand.Create(),
        };
        return root.Parse(args).Invoke();
    }

    /// <summary>Runs a command body, turning expected failures into one clear line on stderr and exit code 1.</summary>
    public static int Guard(Func<int> body)
    {
        try { return body(); }
        catch (Exception e) when (e is InvalidDataException or FileNotFoundException or InvalidOperationException
                                      or ArgumentException or NonFiniteLossException or DirectoryNotFoundException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }
}

/// <summary>Options shared by the training stages: config file, key=value overrides, device, resume.</summary>
internal sealed class StageOptions
{
    public Option<string?> Config { get; } = new("--config") { Description = "JSON config file (snake_case keys; see README). Command-line options override it." };
    public Option<string[]> Set { get; } = new("--set") { Description = "Override any config key: --set lr=1e-3 --set decay=linear (repeatable).", AllowMultipleArgumentsPerToken = false };
    public Option<string?> Out { get; } = new("--out") { Description = "Output folder." };
    public Option<string?> Device { get; } = new("--device") { Description = "cpu or cuda (cuda needs the GPU build, see README)." };
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
