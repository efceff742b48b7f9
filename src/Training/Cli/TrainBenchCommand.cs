using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Rlhf.Export;
using Rlhf.Export.Hf;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.Sft;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Cli;

/// <summary>
/// <c>rlhf bench train</c>: tokens/s of one training step (forward, next-token loss, backward, AdamW step) in
/// <see cref="Precision.Fp32"/> and <see cref="Precision.Bf16"/> on random weights and tokens, per model config, with
/// the achieved GFLOP/s as a share of libtorch's fp32 and bf16 matmul peaks measured in the same run.
/// </summary>
internal static class TrainBenchCommand
{
    /// <summary>The <c>train</c> sub-command of <c>rlhf bench</c>.</summary>
    public static Command Create()
    {
        var configs = new Option<string>("--configs") { Description = "Comma-separated name=config.json pairs (a bare name means models/<name>/config.json).", DefaultValueFactory = _ => "tiny,small" };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per step.", DefaultValueFactory = _ => 8 };
        var seqLen = new Option<int>("--seq-len") { Description = "Tokens per sequence.", DefaultValueFactory = _ => 128 };
        var steps = new Option<int>("--steps") { Description = "Timed steps per cell after one warm-up step; the median counts.", DefaultValueFactory = _ => 3 };
        var threads = new Option<int>("--threads") { Description = "Intra-op threads (0 = all cores).", DefaultValueFactory = _ => 0 };
        var json = new Option<string?>("--json") { Description = "Also write the figures to this JSON file (keys train_tokens_per_s.<fp32|bf16>.<config>, bf16_over_fp32.<config>, matmul_gflops.<fp32|bf16>, optimizer_seconds.<fp32|bf16>.<config>, page_faults_per_step.<fp32|bf16>.<config>)." };
        var cmd = new Command("train", "Training-step tokens/s in fp32 and bf16 mixed precision for each model config, with libtorch's fp32 and bf16 matmul peaks measured in the same run.") { configs, batch, seqLen, steps, threads, json };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var list = r.GetValue(configs)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(ParseConfig).ToList();
            if (r.GetValue(batch) < 1 || r.GetValue(seqLen) < 2 || r.GetValue(steps) < 1)
                throw new ArgumentException("--batch-size and --steps must be ≥ 1 and --seq-len ≥ 2.");
            DeviceSelector.SetThreads(r.GetValue(threads));
            var figures = Run(list, r.GetValue(batch), r.GetValue(seqLen), r.GetValue(steps), Console.Out);
            if (r.GetValue(json) is string file)
                BenchFigures.Write(file, figures);
            return 0;
        }));
        return cmd;
    }

    static (string Name, ModelConfig Cfg) ParseConfig(string item)
    {
        int eq = item.IndexOf('=');
        string name = eq < 0 ? item : item[..eq];
        string path = eq < 0 ? Path.Combine("models", item, "config.json") : item[(eq + 1)..];
        if (!File.Exists(path)) throw new FileNotFoundException($"Model config '{path}' not found (--configs takes name=path/config.json or a folder name under models/).");
        return (name, ModelConfig.Load(path));
    }

    /// <summary>Runs every config × precision and writes the table to <paramref name="w"/>; returns the figures by JSON key.</summary>
    public static SortedDictionary<string, double> Run(IReadOnlyList<(string Name, ModelConfig Cfg)> configs, int batch, int seqLen, int steps, TextWriter w)
    {
        var figures = new SortedDictionary<string, double>(StringComparer.Ordinal);
        var peaks = new Dictionary<Precision, double>
        {
            [Precision.Fp32] = MatMulPeak(ScalarType.Float32),
            [Precision.Bf16] = MatMulPeak(ScalarType.BFloat16),
        };
        figures["matmul_gflops.fp32"] = peaks[Precision.Fp32];
        figures["matmul_gflops.bf16"] = peaks[Precision.Bf16];
        w.WriteLine($"libtorch matmul peak, {torch.get_num_threads()} threads, 1024x1024x1024: fp32 {peaks[Precision.Fp32]:F0} GFLOP/s, bf16 {peaks[Precision.Bf16]:F0} GFLOP/s");
        w.WriteLine($"one step = forward + next-token loss + backward + AdamW, batch {batch} x {seqLen} tokens, random weights and tokens");
        w.WriteLine($"{"config",-8} {"params",8} | {"precision",9} {"ms/step",9} {"fwd+bwd",8} {"AdamW",6} {"faults",7} {"tokens/s",9} {"GFLOP/s",8} {"%bf16 peak",10} {"loss",7} | {"bf16/fp32",9}");
        foreach (var (name, cfg0) in configs)
        {
            var cfg = cfg0 with { ResidualDropout = 0, AttentionDropout = 0, MaxPositionEmbeddings = Math.Max(cfg0.MaxPositionEmbeddings, seqLen) };
            double fp32Tps = 0;
            foreach (var precision in new[] { Precision.Fp32, Precision.Bf16 })
            {
                var (seconds, optimizerSeconds, faults, loss, parameters) = TimeSteps(cfg, precision, batch, seqLen, steps);
                double tps = batch * seqLen / seconds;
                double gflops = StepFlops(cfg, batch, seqLen) / seconds / 1e9;
                figures[$"train_tokens_per_s.{Key(precision)}.{name}"] = tps;
                figures[$"optimizer_seconds.{Key(precision)}.{name}"] = optimizerSeconds;
                if (faults is double f) figures[$"page_faults_per_step.{Key(precision)}.{name}"] = f;
                string ratio = "";
                if (precision == Precision.Fp32) fp32Tps = tps;
                else
                {
                    figures[$"bf16_over_fp32.{name}"] = tps / fp32Tps;
                    ratio = $"{tps / fp32Tps:F2}x";
                }
                w.WriteLine($"{name,-8} {parameters / 1e6,7:F1}M | {Key(precision),9} {seconds * 1000,9:F0} {(seconds - optimizerSeconds) * 1000,8:F0} {optimizerSeconds * 1000,6:F0} {faults?.ToString("F0") ?? "-",7} {tps,9:F0} {gflops,8:F1} {100 * gflops / peaks[Precision.Bf16],9:F0}% {loss,7:F3} | {ratio,9}");
            }
        }
        using var self = Process.GetCurrentProcess();
        w.WriteLine($"peak RSS: {self.PeakWorkingSet64 / (1024.0 * 1024):F0} MiB");
        return figures;
    }

    static string Key(Precision p) => p.ToString().ToLowerInvariant();

    /// <summary>
    /// Median seconds of <paramref name="steps"/> timed training steps after one warm-up step, the median seconds of
    /// their optimizer steps alone, the median of the process's minor page faults per timed step (Linux; see <see cref="HostAllocator"/>);
    /// the last loss; parameter count.
    /// </summary>
    static (double Seconds, double OptimizerSeconds, double? FaultsPerStep, double Loss, long Parameters) TimeSteps(ModelConfig cfg, Precision precision, int batch, int seqLen, int steps)
    {
        using var model = LlamaForCausalLM.Create(cfg, CPU, ScalarType.Float32, seed: 1234);
        model.Precision = precision;
        model.train();
        using var optimizer = Optimization.AdamW(model, new AdamWSettings(1e-4, 0.1, 0.9, 0.95, 1e-8));
        using var gen = new torch.Generator(7, CPU);
        using var ids = torch.randint(3, cfg.VocabSize, new long[] { batch, seqLen }, ScalarType.Int64, generator: gen);
        using var mask = torch.ones([batch, seqLen], ScalarType.Int64);
        using var pos = PositionIds.FromAttentionMask(mask);
        using var targets = torch.cat([ids[.., 1..], torch.full([batch, 1], SftBatch.Ignore, ScalarType.Int64)], 1);
        var times = new List<double>();
        var optimizerTimes = new List<double>();
        var stepClock = new Stopwatch();
        double loss = double.NaN;
        var sw = new Stopwatch();
        var faults = new List<long>();
        for (int s = 0; s <= steps; s++)
        {
            long? faultsBefore = HostAllocator.MinorPageFaults();
            sw.Restart();
            using (var scope = NewDisposeScope())
            {
                Optimization.ClearGrads(optimizer);
                var logits = model.Forward(ids, mask, pos);
                var l = SftLoss.SummedNll(logits, targets) / (batch * (seqLen - 1));
                l.backward();
                stepClock.Restart();
                optimizer.step();
                stepClock.Stop();
                loss = l.item<float>();
            }
            if (s > 0)
            {
                times.Add(sw.Elapsed.TotalSeconds);
                optimizerTimes.Add(stepClock.Elapsed.TotalSeconds);
                if (faultsBefore is long f0 && HostAllocator.MinorPageFaults() is long f1) faults.Add(f1 - f0);
            }
        }
        times.Sort();
        optimizerTimes.Sort();
        faults.Sort();
        double? faultsPerStep = faults.Count > 0 ? faults[faults.Count / 2] : null;
        return (times[times.Count / 2], optimizerTimes[optimizerTimes.Count / 2], faultsPerStep, loss, model.parameters().Sum(p => p.numel()));
    }

    /// <summary>
    /// FLOPs of one training step: 3 × (2·N_matmul per token + attention 4·S·heads·D per token, causal half) ×
    /// tokens, with N_matmul the parameters used in matmuls (projections, MLP, LM head; not the embedding lookup or norms).
    /// Forward is a third of the step (backward ≈ 2× forward).
    /// </summary>
    internal static double StepFlops(ModelConfig c, int batch, int seqLen)
    {
        double d = c.HeadDim;
        double perLayer = c.HiddenSize * d * (2.0 * c.NumAttentionHeads + 2.0 * c.NumKeyValueHeads) + 3.0 * c.HiddenSize * c.IntermediateSize;
        double matmulParams = c.NumHiddenLayers * perLayer + (double)c.HiddenSize * c.VocabSize;
        double attention = c.NumHiddenLayers * 2.0 * seqLen * c.NumAttentionHeads * d;   // QKᵀ and AV, causal half of 4·S·heads·D
        return 3.0 * batch * seqLen * (2.0 * matmulParams + attention);
    }

    /// <summary>Best of a few 1024³ matmuls in <paramref name="dtype"/>, GFLOP/s.</summary>
    static double MatMulPeak(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var a = torch.randn([1024, 1024]).to(dtype);
        var b = torch.randn([1024, 1024]).to(dtype);
        torch.matmul(a, b);
        double best = double.MaxValue;
        var sw = new Stopwatch();
        for (int i = 0; i < 5; i++)
        {
            sw.Restart();
            using var c = torch.matmul(a, b);
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return 2.0 * 1024 * 1024 * 1024 / best / 1e9;
    }
}
