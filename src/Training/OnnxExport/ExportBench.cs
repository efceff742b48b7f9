using System.Diagnostics;
using Rlhf.Export;
using Rlhf.Inference.Rollout;
using Rlhf.Export.Hf;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.OnnxExport;

/// <summary>One measured figure.</summary>
/// <param name="Config">Model config name (e.g. tiny, 100M).</param>
/// <param name="Engine">ort-plain, ort-gqa or torch.</param>
/// <param name="Measure">export, size, prefill or decode.</param>
/// <param name="Batch">Batch size (0 for export/size).</param>
/// <param name="Value">The figure.</param>
/// <param name="Unit">ms or MB.</param>
public sealed record BenchRow(string Config, string Engine, string Measure, int Batch, double Value, string Unit);

/// <summary>Benchmark settings.</summary>
public sealed record BenchOptions
{
    /// <summary>Tokens in the prefill and in the cache before the decode step.</summary>
    public int Tokens { get; init; } = 32;
    /// <summary>Batch sizes measured.</summary>
    public IReadOnlyList<int> Batches { get; init; } = [1, 32];
    /// <summary>Timed repetitions (the median is reported) after one warm-up.</summary>
    public int Repeats { get; init; } = 5;
    /// <summary>Threads for ONNX Runtime and TorchSharp.</summary>
    public int Threads { get; init; } = Environment.ProcessorCount;
    /// <summary>Folder for the temporary exports (deleted afterwards).</summary>
    public string? WorkFolder { get; init; }
}

/// <summary>
/// ORT forward time of both graph variants vs the TorchSharp forward (fp32, CPU) for a prefill of
/// <see cref="BenchOptions.Tokens"/> tokens and one decode step on a cache of that many tokens, plus export time and
/// size per variant. Random weights; no assertions on time.
/// </summary>
public static class ExportBench
{
    /// <summary>A ~100M-parameter llama config (V 32000 tied, H 768, 12 layers, 12 heads / 4 KV heads, D 64, FFN 2048).</summary>
    public static ModelConfig Config100M => new()
    {
        ModelType = "llama", VocabSize = 32000, HiddenSize = 768, IntermediateSize = 2048, NumHiddenLayers = 12,
        NumAttentionHeads = 12, NumKeyValueHeads = 4, MaxPositionEmbeddings = 512, TieWordEmbeddings = true,
        EosTokenIds = [2], BosTokenId = 1, PadTokenId = 0,
    };

    /// <summary>models/tiny/config.json, found as <see cref="Common.ShippedFiles"/> finds it.</summary>
    public static ModelConfig TinyConfig() => ModelConfig.Load(Common.ShippedFiles.Find(Path.Combine("models", "tiny", "config.json"))
        ?? throw new FileNotFoundException("models/tiny/config.json was not found in the working folder or above the rlhf binary."));

    /// <summary>Runs the benchmark for each named config.</summary>
    public static IReadOnlyList<BenchRow> Run(IEnumerable<(string Name, ModelConfig Config)> configs, BenchOptions? options = null, Action<BenchRow>? progress = null)
    {
        options ??= new BenchOptions();
        var rows = new List<BenchRow>();
        void Add(BenchRow r) { rows.Add(r); progress?.Invoke(r); }
        torch.set_num_threads(options.Threads);
        string work = options.WorkFolder ?? Path.Combine(Path.GetTempPath(), $"rlhf-bench-{Guid.NewGuid():N}"[..24]);
        try
        {
            foreach (var (name, cfg) in configs)
            {
                using var model = LlamaForCausalLM.Create(cfg with { ResidualDropout = 0, AttentionDropout = 0 }, torch.CPU, ScalarType.Float32, seed: 7);
                model.eval();
                var rng = new Random(3);
                var engines = new List<(string Engine, RolloutEngine Decoder)>();
                try
                {
                    foreach (var graph in new[] { GraphKind.Plain, GraphKind.ContribGqa })
                    {
                        if (graph == GraphKind.ContribGqa && cfg.HeadDim % 16 != 0) continue;
                        string engine = "ort-" + ExportNames.Name(graph);
                        string folder = Path.Combine(work, $"{name}-{ExportNames.Name(graph)}");
                        var sw = Stopwatch.StartNew();
                        var result = PolicyExport.Export(model.Config, model.state_dict(), folder, graph, new ExportOptions { Overwrite = true });
                        Add(new BenchRow(name, engine, "export", 0, sw.Elapsed.TotalMilliseconds, "ms"));
                        Add(new BenchRow(name, engine, "size", 0, (result.Saved.ModelBytes + result.Saved.DataBytes) / 1e6, "MB"));
                        engines.Add((engine, RolloutEngine.OpenDecoder(folder, options.Threads)));
                    }
                    foreach (int b in options.Batches)
                        foreach (var row in Forward(name, model, engines, b, options, rng)) Add(row);
                }
                finally
                {
                    foreach (var (_, d) in engines) d.Dispose();
                }
            }
        }
        finally
        {
            if (Directory.Exists(work)) Directory.Delete(work, recursive: true);
        }
        return rows;
    }

    /// <summary>
    /// Prefill and decode times of every engine at batch <paramref name="b"/>. The engines run interleaved within each
    /// repetition (ORT graphs, then TorchSharp), so load changes on a shared machine hit them alike.
    /// </summary>
    static IEnumerable<BenchRow> Forward(string name, LlamaForCausalLM model, List<(string Engine, RolloutEngine Decoder)> engines, int b,
        BenchOptions options, Random rng)
    {
        var cfg = model.Config;
        int t = options.Tokens;
        var (ids, mask, pos) = Prompt(b, t, cfg.VocabSize, rng);
        var (sIds, sMask, sPos) = Step(b, t, cfg.VocabSize, rng);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var idsT = torch.tensor(Flat(ids), [b, t]);
        var maskT = torch.tensor(Flat(mask), [b, t]);
        var posT = torch.tensor(Flat(pos), [b, t]);
        var sIdsT = torch.tensor(Flat(sIds), [b, 1]);
        var sMaskT = torch.tensor(Flat(sMask), [b, t + 1]);
        var sPosT = torch.tensor(Flat(sPos), [b, 1]);
        var caches = engines.Select(e => e.Decoder.Forward(ids, mask, pos, null)).ToList();
        try
        {
            int n = engines.Count + 1;
            var prefill = Enumerable.Range(0, n).Select(_ => new List<double>()).ToArray();
            var decode = Enumerable.Range(0, n).Select(_ => new List<double>()).ToArray();
            for (int r = 0; r <= Math.Max(1, options.Repeats); r++)
            {
                bool keep = r > 0;                                                       // repetition 0 is a warm-up
                for (int e = 0; e < engines.Count; e++)
                {
                    var d = engines[e].Decoder;
                    double p = Time(() => d.Forward(ids, mask, pos, null).Dispose());
                    var c = caches[e];
                    double s = Time(() => d.Forward(sIds, sMask, sPos, c).Dispose());
                    if (keep) { prefill[e].Add(p); decode[e].Add(s); }
                }
                double tp = Time(() => model.Forward(idsT, maskT, posT).Dispose());
                using var cache = new KvCache(cfg.NumHiddenLayers);
                model.Forward(idsT, maskT, posT, cache).Dispose();
                double ts = Time(() => model.Forward(sIdsT, sMaskT, sPosT, cache).Dispose());
                if (keep) { prefill[^1].Add(tp); decode[^1].Add(ts); }
            }
            var names = engines.Select(e => e.Engine).Append("torch").ToList();
            var rows = new List<BenchRow>();
            for (int e = 0; e < n; e++)
            {
                rows.Add(new BenchRow(name, names[e], "prefill", b, Median(prefill[e]), "ms"));
                rows.Add(new BenchRow(name, names[e], "decode", b, Median(decode[e]), "ms"));
            }
            return rows;
        }
        finally
        {
            foreach (var c in caches) c.Dispose();
        }
    }

    static double Time(Action run)
    {
        var sw = Stopwatch.StartNew();
        run();
        return sw.Elapsed.TotalMilliseconds;
    }

    static double Median(List<double> times)
    {
        var sorted = times.Order().ToList();
        return sorted[sorted.Count / 2];
    }

    /// <summary>Rows as a side-by-side table: one line per config/measure/batch, one column per engine.</summary>
    public static string Format(IReadOnlyList<BenchRow> rows)
    {
        var engines = rows.Select(r => r.Engine).Distinct().ToList();
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"{"config",-8} {"measure",-8} {"batch",5} " + string.Join(" ", engines.Select(e => $"{e,12}")));
        foreach (var g in rows.GroupBy(r => (r.Config, r.Measure, r.Batch)))
        {
            string unit = g.First().Unit;
            sb.Append($"{g.Key.Config,-8} {g.Key.Measure,-8} {g.Key.Batch,5} ");
            sb.AppendLine(string.Join(" ", engines.Select(e => g.FirstOrDefault(r => r.Engine == e) is { } r
                ? $"{r.Value.ToString("F1", System.Globalization.CultureInfo.InvariantCulture) + " " + unit,12}" : $"{"-",12}")));
        }
        return sb.ToString();
    }

    static (long[,] Ids, long[,] Mask, long[,] Pos) Prompt(int b, int s, int vocab, Random rng)
    {
        var ids = new long[b, s]; var mask = new long[b, s]; var pos = new long[b, s];
        for (int i = 0; i < b; i++) for (int j = 0; j < s; j++) { ids[i, j] = rng.Next(1, vocab); mask[i, j] = 1; pos[i, j] = j; }
        return (ids, mask, pos);
    }

    static (long[,] Ids, long[,] Mask, long[,] Pos) Step(int b, int past, int vocab, Random rng)
    {
        var ids = new long[b, 1]; var mask = new long[b, past + 1]; var pos = new long[b, 1];
        for (int i = 0; i < b; i++) { ids[i, 0] = rng.Next(1, vocab); pos[i, 0] = past; for (int j = 0; j <= past; j++) mask[i, j] = 1; }
        return (ids, mask, pos);
    }

    static long[] Flat(long[,] a)
    {
        var f = new long[a.Length];
        Buffer.BlockCopy(a, 0, f, 0, a.Length * sizeof(long));
        return f;
    }
}
