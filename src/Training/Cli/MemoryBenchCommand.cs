using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Rlhf.Export.Hf;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;

namespace Rlhf.Training.Cli;

/// <summary>
/// <c>rlhf bench memory</c>: peak resident memory and seconds per PPO iteration for full fine-tuning vs LoRA ranks,
/// with and without activation checkpointing, per model config. Each cell is a separate <c>rlhf ppo</c> process (peak
/// RSS is per process) on random models (a fresh policy with a tokenizer trained on the default task, and a reward
/// model from it exported to ONNX); a cell whose lower bound on memory (<see cref="MinimumBytes"/>) exceeds what the
/// machine has available is not started and says what it would need.
/// </summary>
internal static class MemoryBenchCommand
{
    /// <summary>One cell of the table.</summary>
    public sealed record Cell(string Config, int LoraRank, bool Checkpointing);

    /// <summary>A cell's figures: parameters of the policy (of the config for a skipped cell; of the written policy, whose vocabulary is its tokenizer's, for a run one), the memory lower bound, and either the measurements or why there are none (skipped, or the process failed).</summary>
    public sealed record Result(Cell Cell, long Parameters, double MinimumGb, double? PeakRssMb, double? IterationSeconds, long? TrainableParameters, string? Unmeasured);

    /// <summary>The <c>memory</c> sub-command of <c>rlhf bench</c>.</summary>
    public static Command Create()
    {
        var configs = new Option<string>("--configs") { Description = "Comma-separated names of model folders under models/ (their config.json).", DefaultValueFactory = _ => "small,medium" };
        var ranks = new Option<string>("--lora-ranks") { Description = "Comma-separated LoRA ranks (0 = full fine-tuning).", DefaultValueFactory = _ => "0,8,16,64" };
        var checkpointing = new Option<string>("--checkpointing") { Description = "Comma-separated gradient_checkpointing settings to run: off, on.", DefaultValueFactory = _ => "off,on" };
        var batch = new Option<int>("--rollout-batch") { Description = "Rollouts per iteration (one minibatch, one epoch).", DefaultValueFactory = _ => 4 };
        var newTokens = new Option<int>("--max-new-tokens") { Description = "Response length cap.", DefaultValueFactory = _ => 16 };
        var threads = new Option<int>("--threads") { Description = "Threads (0 = all cores).", DefaultValueFactory = _ => 0 };
        var json = new Option<string?>("--json") { Description = "Also write the figures to this JSON file (keys peak_rss_mb.<config>.<full|lora{r}>.<plain|checkpointed>, iteration_seconds.<…>, trainable_parameters.<…>)." };
        var cmd = new Command("memory", "Peak RSS and seconds per PPO iteration: full fine-tuning vs LoRA ranks, with and without activation checkpointing, per model config (each cell its own process; cells that cannot fit are skipped).")
            { configs, ranks, checkpointing, batch, newTokens, threads, json };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var names = r.GetValue(configs)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            int[] rankList = [.. r.GetValue(ranks)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s =>
                int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v : throw new ArgumentException($"--lora-ranks: '{s}' is not a rank (0 = full fine-tuning)."))];
            bool[] ckpt = [.. r.GetValue(checkpointing)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => s switch
            {
                "off" => false, "on" => true, _ => throw new ArgumentException($"--checkpointing: '{s}' is neither off nor on."),
            })];
            var settings = new PpoConfig { RolloutBatch = r.GetValue(batch), MiniBatch = r.GetValue(batch), PpoEpochs = 1, MaxNewTokens = r.GetValue(newTokens), Threads = r.GetValue(threads) };
            var results = Run(names, rankList, ckpt, settings, Console.Out, AvailableBytes());
            if (r.GetValue(json) is string file) BenchFigures.Write(file, Figures(results));
            return 0;
        }));
        return cmd;
    }

    /// <summary>Runs every config × rank × checkpointing cell, printing a row per cell; <paramref name="available"/> bytes bound what may start (null = no bound).</summary>
    public static List<Result> Run(IReadOnlyList<string> configNames, IReadOnlyList<int> ranks, IReadOnlyList<bool> checkpointing, PpoConfig settings,
        TextWriter w, long? available)
    {
        var results = new List<Result>();
        w.WriteLine($"one PPO iteration per cell ({settings.RolloutBatch} rollouts of up to {settings.MaxNewTokens} tokens, one minibatch), each cell its own process; "
                    + $"memory available: {(available is long a ? $"{a / 1e9:F1} GB" : "not bounded")}");
        w.WriteLine($"{"config",-8} {"params",8} {"tuning",8} {"checkpointing",13} | {"trainable",10} {"≥ GB",6} {"peak RSS MB",11} {"s/iteration",11}");
        foreach (string name in configNames)
        {
            string configPath = Path.Combine("models", name, "config.json");
            if (!File.Exists(configPath)) throw new FileNotFoundException($"Model config '{configPath}' not found (--configs takes folder names under models/).");
            long parameters = Parameters(ModelConfig.Load(configPath));
            string root = Directory.CreateTempSubdirectory("rlhf-bench-memory-").FullName;
            try
            {
                string? sft = null, rm = null;
                foreach (int rank in ranks)
                    foreach (bool ckpt in checkpointing)
                    {
                        var cell = new Cell(name, rank, ckpt);
                        double minimum = MinimumBytes(parameters, rank > 0);
                        Result result;
                        if (available is long avail && minimum > avail)
                            result = new Result(cell, parameters, minimum / 1e9, null, null, null, $"skipped: needs ≥ {minimum / 1e9:F1} GB, {avail / 1e9:F1} GB available");
                        else
                        {
                            if (sft is null) (sft, rm) = PpoBenchCommand.RandomModels(name, root, settings.Threads);
                            // the policy as written: its vocabulary is the tokenizer's trained on the default task
                            result = RunCell(cell, Parameters(ModelConfig.LoadFolder(sft)), minimum, settings, sft, rm!, root);
                        }
                        results.Add(result);
                        w.WriteLine($"{name,-8} {parameters / 1e6,7:F0}M {Tuning(rank),8} {(ckpt ? "on" : "off"),13} | "
                                    + (result.Unmeasured is string why ? $"{"-",10} {minimum / 1e9,6:F1} {why}"
                                        : $"{result.TrainableParameters / 1e6,9:F2}M {minimum / 1e9,6:F1} {result.PeakRssMb,11:F0} {result.IterationSeconds,11:F2}"));
                    }
            }
            finally
            {
                try { Directory.Delete(root, true); } catch (IOException) { }
            }
        }
        return results;
    }

    /// <summary>What the runtimes take before any model (.NET, libtorch, ONNX Runtime): PPO on the 3.5M-parameter tiny model peaks at about 1.1 GB.</summary>
    public const double RuntimeBytes = 1.5e9;

    /// <summary>
    /// A lower bound on the resident bytes of a PPO run with a critic on a policy of P parameters, all float32 (4 bytes
    /// each), before activations: the actor, the critic, the ONNX rollout engine's copy and the snapshot a weight push
    /// sends, and the ONNX reward model, 4P each; with full fine-tuning also the reference policy (4P) and a gradient
    /// and two AdamW moments for actor and critic (12P each): 48P. With LoRA the reference is the actor's base and only
    /// the adapters train: 20P. Plus <see cref="RuntimeBytes"/>.
    /// </summary>
    public static double MinimumBytes(long parameters, bool lora) => (lora ? 20.0 : 48.0) * parameters + RuntimeBytes;

    /// <summary>
    /// Parameters of a causal LM of this config: embeddings V·H (and an untied head V·H), per layer the q/k/v/o
    /// projections H·(2·h·d + 2·h_kv·d) (+ q/k/v biases h·d + 2·h_kv·d, + o bias H), the SwiGLU MLP 3·H·I and two norms
    /// 2·H, and the final norm H.
    /// </summary>
    public static long Parameters(ModelConfig c)
    {
        long h = c.HiddenSize, q = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim;
        long layer = h * (2 * q + 2 * kv) + (c.QkvBias ? q + 2 * kv : 0) + (c.OutputBias ? h : 0) + 3 * h * c.IntermediateSize + 2 * h;
        return (long)c.VocabSize * h * (c.TieWordEmbeddings ? 1 : 2) + c.NumHiddenLayers * layer + h;
    }

    static string Tuning(int rank) => rank == 0 ? "full" : $"lora{rank}";

    static string Key(Cell c) => $"{c.Config}.{Tuning(c.LoraRank)}.{(c.Checkpointing ? "checkpointed" : "plain")}";

    /// <summary>One cell: <c>rlhf ppo</c> for two iterations in its own process; peak RSS from its summary, seconds from its last iteration's phases.</summary>
    static Result RunCell(Cell cell, long parameters, double minimum, PpoConfig settings, string sft, string rm, string root)
    {
        string dir = Path.Combine(root, Key(cell));
        Directory.CreateDirectory(dir);
        var cfg = settings with
        {
            Out = Path.Combine(dir, "ppo"), SftModel = sft, RmModel = null, RewardModel = rm, RewardNormalization = ScoreNormalization.None,
            Iterations = 2, EvalPrompts = 2, EvalEvery = 100, CheckpointEvery = 0, BestOfN = [1], DefaultPrompts = Math.Max(64, 2 * settings.RolloutBatch),
            LoraRank = cell.LoraRank, GradientCheckpointing = cell.Checkpointing,
        };
        string cfgFile = Path.Combine(dir, "ppo.json");
        File.WriteAllText(cfgFile, ConfigLoader.ToJson(cfg));
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "rlhf.dll"), "ppo", "--config", cfgFile }) start.ArgumentList.Add(a);
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start `dotnet rlhf.dll ppo`");
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(60)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"bench memory: the {Key(cell)} cell ran past 60 minutes.");
        }
        if (process.ExitCode != 0)   // e.g. killed for memory (137): the row says so and the other cells go on
            return new Result(cell, parameters, minimum / 1e9, null, null, null,
                $"failed: exit {process.ExitCode}{(process.ExitCode == 137 ? " (killed: out of memory?)" : "")} {Last(errors.Result + output.Result)}".TrimEnd());
        var summary = JsonSerializer.Deserialize<PpoSummary>(File.ReadAllText(Path.Combine(cfg.Out, "summary.json")), ConfigLoader.Json)!;
        var last = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv")).Rows[^1];
        double seconds = PhaseSeconds.TotalOf(last);
        Directory.Delete(dir, true);
        return new Result(cell, parameters, minimum / 1e9, summary.PeakRssMb, seconds, summary.TrainableParameters, null);
    }

    /// <summary>The figures by JSON key (measured cells only).</summary>
    internal static SortedDictionary<string, double> Figures(IEnumerable<Result> results)
    {
        var f = new SortedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var r in results.Where(r => r.Unmeasured is null))
        {
            f[$"peak_rss_mb.{Key(r.Cell)}"] = r.PeakRssMb!.Value;
            f[$"iteration_seconds.{Key(r.Cell)}"] = r.IterationSeconds!.Value;
            f[$"trainable_parameters.{Key(r.Cell)}"] = r.TrainableParameters!.Value;
        }
        return f;
    }

    /// <summary>The last non-empty line of a process's output, on one line.</summary>
    static string Last(string output) => ErrorLines.OneLine(output.Split('\n').LastOrDefault(l => l.Trim().Length > 0) ?? "");

    /// <summary>MemAvailable of /proc/meminfo in bytes (Linux); null elsewhere.</summary>
    static long? AvailableBytes()
    {
        if (!File.Exists("/proc/meminfo")) return null;
        foreach (string line in File.ReadLines("/proc/meminfo"))
            if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        return null;
    }
}
