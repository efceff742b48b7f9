using Rlhf.Inference.Services;
using Rlhf.Export;
using Rlhf.Training.OnnxExport;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using Rlhf.Export.Hf;
using Rlhf.Export.Onnx;
using Rlhf.Inference.Onnx;
using Rlhf.Inference.Rollout;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using static TorchSharp.torch;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Training.Cli;

/// <summary>
/// <c>rlhf bench rollout</c>: tokens/s of the ONNX Runtime rollout engine vs TorchSharp eager KV-cached
/// <see cref="Generation.Generate"/> on the same random weights, per batch size, with achieved GFLOP/s as a share of an
/// ORT MatMul peak measured in the same run, the weight-sync cost (in-memory initializer override vs re-export to a
/// file), left vs right padding, and peak RSS.
/// </summary>
internal static class RolloutBenchCommand
{
    /// <summary>The <c>rollout</c> sub-command of <c>rlhf bench</c>.</summary>
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "Model config.json of the default model.", DefaultValueFactory = _ => "models/tiny/config.json" };
        var large = new Option<bool>("--large") { Description = "Also run a ~100M-parameter random config (a few minutes on 2 cores)." };
        var batches = new Option<string>("--batches") { Description = "Comma-separated batch sizes.", DefaultValueFactory = _ => "1,8,32,64" };
        var newTokens = new Option<int>("--new-tokens") { Description = "Tokens generated per row.", DefaultValueFactory = _ => 64 };
        var promptLen = new Option<int>("--prompt-length") { Description = "Longest prompt (rows get lengths between half of it and it).", DefaultValueFactory = _ => 16 };
        var threads = new Option<int>("--threads") { Description = "Threads for both engines (0 = all cores).", DefaultValueFactory = _ => 0 };
        var noTorch = new Option<bool>("--skip-torch") { Description = "Only the ORT engine." };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs per cell; the fastest counts (the machine may be shared).", DefaultValueFactory = _ => 2 };
        var json = new Option<string?>("--json") { Description = "Also write the figures to this JSON file (keys tokens_per_s.<engine>.<greedy|sample>.<batch>, sync_seconds.<engine>, int8_over_fp32.<config>.<batch>; the --large model's keys start with large.)." };
        var rollout = new Command("rollout", "Our ORT rollout engine vs ONNX Runtime GenAI vs TorchSharp eager generation, weight sync of each.") { config, large, batches, newTokens, promptLen, threads, noTorch, repeats, json };
        rollout.SetAction(r => RlhfCommand.Guard(() =>
        {
            int[] bs = [.. r.GetValue(batches)!.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(s => int.Parse(s.Trim(), CultureInfo.InvariantCulture))];
            var configs = new List<(string Name, ModelConfig Cfg)>();
            string path = r.GetValue(config)!;
            configs.Add((Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(path))) ?? "default",
                File.Exists(path) ? ModelConfig.Load(path) : throw new FileNotFoundException($"Model config '{path}' not found; pass --config.")));
            if (r.GetValue(large)) configs.Add(("~100M", Large));
            var figures = new SortedDictionary<string, double>(StringComparer.Ordinal);
            RunRollout(configs, bs, r.GetValue(newTokens), r.GetValue(promptLen), r.GetValue(threads), !r.GetValue(noTorch), Console.Out, Math.Max(1, r.GetValue(repeats)), figures);
            if (r.GetValue(json) is string file)
                BenchFigures.Write(file, figures);
            return 0;
        }));
        return rollout;
    }

    /// <summary>A ~100M-parameter Llama config (96M with tied embeddings).</summary>
    public static ModelConfig Large => new()
    {
        VocabSize = 16384, HiddenSize = 768, IntermediateSize = 2304, NumHiddenLayers = 12, NumAttentionHeads = 12, NumKeyValueHeads = 4,
        MaxPositionEmbeddings = 512, TieWordEmbeddings = true, EosTokenIds = [2], PadTokenId = 0,
    };

    /// <summary>Runs the benchmark and writes the report to <paramref name="w"/> (and the figures to <paramref name="figures"/>).</summary>
    public static void RunRollout(IReadOnlyList<(string Name, ModelConfig Cfg)> configs, int[] batches, int newTokens, int promptLen, int threads, bool torchToo, TextWriter w, int repeats = 1,
        IDictionary<string, double>? figures = null)
    {
        figures ??= new Dictionary<string, double>();
        int nThreads = threads > 0 ? threads : Environment.ProcessorCount;
        DeviceSelector.SetThreads(nThreads);
        double peak = MatMulPeak(nThreads);
        w.WriteLine($"ORT MatMul peak ({nThreads} threads, fp32, 512x1024x1024): {peak:F1} GFLOP/s");
        w.WriteLine($"{newTokens} new tokens per row, prompts of {Math.Max(1, promptLen / 2)}..{promptLen} tokens, sampling T=1, no EOS.");
        for (int ci = 0; ci < configs.Count; ci++)
        {
            var (name, cfg) = configs[ci];
            if (cfg.EosTokenIds is not { Count: > 0 }) cfg = cfg with { EosTokenIds = [2] };   // an EOS id distinct from padding (GenAI needs one)
            string keyPrefix = ci == 0 ? "" : "large.";
            using var model = LlamaForCausalLM.Create(cfg, CPU, ScalarType.Float32, 1234);
            model.eval();
            long nParams = model.parameters().Sum(p => p.numel());
            string dir = Path.Combine(Path.GetTempPath(), $"rlhf-bench-{Guid.NewGuid():N}");
            try
            {
                var sw = Stopwatch.StartNew();
                var graph = ExportStage.DefaultGraph(cfg);   // the graph PPO rolls out on
                ExportStage.ExportPolicy(model, dir, graph, new ExportOptions { Overwrite = true }, parity: false);
                double exportMs = sw.Elapsed.TotalMilliseconds;
                string plainDir = dir + "-plain";
                LlamaGraph.Export(cfg, model.state_dict(), plainDir);
                using var engine = RolloutEngine.Load(dir, new RolloutEngineOptions { Threads = nThreads, EosTokenIds = [], PadTokenId = 0, MaxBatchSize = batches.Max() });
                RolloutEngine? int8 = null;
                if (graph == GraphKind.ContribGqa)
                {
                    ExportStage.ExportPolicy(model, dir + "-int8", graph, new ExportOptions { Overwrite = true, Precision = RolloutPrecision.Int8 }, parity: false);
                    int8 = RolloutEngine.Load(dir + "-int8", new RolloutEngineOptions { Threads = nThreads, EosTokenIds = [], PadTokenId = 0, MaxBatchSize = batches.Max() });
                }
                using var int8Owner = int8;
                w.WriteLine();
                w.WriteLine($"== {name}: {nParams / 1e6:F1}M parameters (V={cfg.VocabSize}, H={cfg.HiddenSize}, L={cfg.NumHiddenLayers}, heads {cfg.NumAttentionHeads}/{cfg.NumKeyValueHeads}, F={cfg.IntermediateSize}); ORT graph: {graph}");
                w.WriteLine($"{"batch",5} | {"ORT tok/s",10} {"GFLOP/s",8} {"%peak",6} {"prefill ms",10} | {"int8 tok/s",10} {"int8/fp32",9} | {"torch tok/s",11} {"GFLOP/s",8} {"%peak",6} | {"ORT/torch",9}");
                var rng = new Random(7);
                foreach (int b in batches)
                {
                    var prompts = Enumerable.Range(0, b).Select(_ => Enumerable.Range(0, rng.Next(Math.Max(1, promptLen / 2), promptLen + 1))
                        .Select(_ => rng.Next(3, cfg.VocabSize)).ToArray()).ToArray();
                    double flops = Flops(cfg, prompts.Select(p => p.Length).ToArray(), newTokens);
                    var sampling = new SamplingOptions { Temperature = 1f, MaxNewTokens = newTokens };
                    var requests = prompts.Select((p, i) => RolloutRequest.FromIds(p, sampling with { Seed = (ulong)i })).ToList();
                    engine.Generate([.. requests.Take(Math.Min(b, 4)).Select(q => q with { Sampling = sampling with { MaxNewTokens = 4 } })]);   // warm-up
                    double ortS = double.MaxValue;
                    IReadOnlyList<RolloutResult> res = [];
                    for (int k = 0; k < repeats; k++)
                    {
                        sw.Restart();
                        res = engine.Generate(requests);
                        ortS = Math.Min(ortS, sw.Elapsed.TotalSeconds);
                    }
                    double ortTps = b * newTokens / ortS;
                    string int8Cols = $"{"-",10} {"-",9}";
                    if (int8 is not null)
                    {
                        int8.Generate([.. requests.Take(Math.Min(b, 4)).Select(q => q with { Sampling = sampling with { MaxNewTokens = 4 } })]);   // warm-up
                        double int8S = double.MaxValue;
                        for (int k = 0; k < repeats; k++)
                        {
                            sw.Restart();
                            int8.Generate(requests);
                            int8S = Math.Min(int8S, sw.Elapsed.TotalSeconds);
                        }
                        double int8Tps = b * newTokens / int8S;
                        figures[$"int8_over_fp32.{name}.{b}"] = int8Tps / ortTps;
                        figures[$"{keyPrefix}tokens_per_s.ort_int8.sample.{b}"] = int8Tps;
                        int8Cols = $"{int8Tps,10:F0} {int8Tps / ortTps,8:F2}x";
                    }
                    string torchCols = $"{"-",11} {"-",8} {"-",6}";
                    string ratio = "-";
                    if (torchToo)
                    {
                        var opts = new SamplingOptions { MaxNewTokens = newTokens, Temperature = 1f, Seed = 1 };
                        var longPrompts = prompts.Select(p => p.Select(x => (long)x).ToArray()).ToList();
                        Generation.Generate(model, [.. longPrompts.Take(Math.Min(b, 4))], opts with { MaxNewTokens = 4 }, [], 0);   // warm-up
                        double torchS = double.MaxValue;
                        for (int k = 0; k < repeats; k++)
                        {
                            sw.Restart();
                            Generation.Generate(model, longPrompts, opts, [], 0);
                            torchS = Math.Min(torchS, sw.Elapsed.TotalSeconds);
                        }
                        double torchTps = b * newTokens / torchS;
                        figures[$"{keyPrefix}tokens_per_s.torch.sample.{b}"] = torchTps;
                        torchCols = $"{torchTps,11:F0} {flops / torchS / 1e9,8:F1} {100 * flops / torchS / 1e9 / peak,5:F0}%";
                        ratio = $"{ortTps / torchTps:F2}x";
                    }
                    figures[$"{keyPrefix}tokens_per_s.ort.sample.{b}"] = ortTps;
                    w.WriteLine($"{b,5} | {ortTps,10:F0} {flops / ortS / 1e9,8:F1} {100 * flops / ortS / 1e9 / peak,5:F0}% {res[0].Timings.PrefillMs,10:F1} | {int8Cols} | {torchCols} | {ratio,9}");
                }

                // Padding: the same batch, left vs right, on the plain graph.
                int pb = batches.Contains(32) ? 32 : batches.Max();
                var pp = Enumerable.Range(0, pb).Select(_ => Enumerable.Range(0, rng.Next(1, promptLen * 2 + 1)).Select(_ => rng.Next(3, cfg.VocabSize)).ToArray()).ToArray();
                var pr = pp.Select((p, i) => RolloutRequest.FromIds(p, new SamplingOptions { Temperature = 1f, MaxNewTokens = newTokens, Seed = (ulong)i })).ToList();
                string padLine = "";
                foreach (var side in new[] { PaddingSide.Left, PaddingSide.Right })
                {
                    using var e = RolloutEngine.Load(plainDir, new RolloutEngineOptions { Threads = nThreads, EosTokenIds = [], Padding = side, MaxBatchSize = pb });
                    e.Generate([.. pr.Take(2)]);
                    double best = double.MaxValue;
                    for (int k = 0; k < repeats; k++)
                    {
                        sw.Restart();
                        e.Generate(pr);
                        best = Math.Min(best, sw.Elapsed.TotalSeconds);
                    }
                    padLine += $"{side} {pb * newTokens / best:F0} tok/s  ";
                }
                w.WriteLine($"padding, plain graph (batch {pb}, prompts 1..{promptLen * 2}): {padLine}");

                // Weight sync: in-memory initializer override vs re-export + reload.
                sw.Restart();
                var snapshot = OrtWeights.From(model, packedQkv: graph == GraphKind.ContribGqa);
                double snapMs = sw.Elapsed.TotalMilliseconds;
                var sessionMs = engine.UpdateWeights(snapshot.Buffers, snapshot).TotalMilliseconds;
                string dir2 = dir + "-reexport";
                sw.Restart();
                LlamaGraph.Export(cfg, model.state_dict(), dir2);
                using (var reloaded = RolloutEngine.Load(dir2, new RolloutEngineOptions { Threads = nThreads })) { }
                double reexportMs = sw.Elapsed.TotalMilliseconds;
                try { Directory.Delete(dir2, true); } catch (IOException) { }
                w.WriteLine($"weight sync: in-memory {snapMs + sessionMs:F0} ms (snapshot copy {snapMs:F0} ms + new session {sessionMs:F0} ms, {snapshot.Bytes / 1e6:F0} MB); " +
                            $"re-export to file + reload {reexportMs:F0} ms (first export {exportMs:F0} ms)");
                figures[keyPrefix + "sync_seconds.ort"] = (snapMs + sessionMs) / 1000;

                Engines(model, cfg, dir, graph, batches, newTokens, promptLen, nThreads, repeats, w, keyPrefix, figures);
            }
            finally
            {
                try { Directory.Delete(dir, true); } catch (IOException) { }
                try { Directory.Delete(dir + "-plain", true); } catch (IOException) { }
                try { if (Directory.Exists(dir + "-int8")) Directory.Delete(dir + "-int8", true); } catch (IOException) { }
            }
        }
        using var self = Process.GetCurrentProcess();
        w.WriteLine();
        w.WriteLine($"peak RSS: {self.PeakWorkingSet64 / (1024.0 * 1024):F0} MiB");
    }

    /// <summary>
    /// Our engine vs ONNX Runtime GenAI on the same folder, greedy and T=1 sampling, then GenAI on the graph PPO uses
    /// with it (weights as inputs, fed per generator), and each engine's weight sync.
    /// </summary>
    static void Engines(LlamaForCausalLM model, ModelConfig cfg, string dir, GraphKind graph, int[] batches, int newTokens, int promptLen,
        int nThreads, int repeats, TextWriter w, string keyPrefix, IDictionary<string, double> figures)
    {
        string inputsDir = dir + "-inputs";
        try
        {
            ExportStage.ExportPolicy(model, inputsDir, graph, new ExportOptions { Overwrite = true, Weights = WeightPlacement.Inputs }, parity: false);
            // GenAI ends rows at the folder's EOS ids: both engines use them, and tokens/s counts the tokens actually generated.
            using var genai = GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { Threads = nThreads });
            using var fed = GenAiRolloutEngine.Load(inputsDir, new GenAiEngineOptions { Threads = nThreads });
            int[] eos = [.. genai.EosTokenIds];
            using var ours = RolloutEngine.Load(dir, new RolloutEngineOptions { Threads = nThreads, EosTokenIds = eos, PadTokenId = 0, MaxBatchSize = batches.Max() });
            var sw = Stopwatch.StartNew();
            var snapshot = OrtWeights.From(model, packedQkv: graph == GraphKind.ContribGqa);
            double snapMs = sw.Elapsed.TotalMilliseconds;
            double feedMs = fed.UpdateWeights(snapshot.Buffers, snapshot).TotalMilliseconds;
            figures[keyPrefix + "sync_seconds.genai"] = (snapMs + feedMs) / 1000;

            w.WriteLine($"engines (generated tokens/s, EOS {string.Join(",", eos)}; GenAI runs chunks of <= {GenAiRolloutEngine.MaxGeneratorBatch}; 'GenAI fed' = weights as graph inputs, the PPO path):");
            w.WriteLine($"{"batch",5} | {"ours greedy",11} {"GenAI greedy",12} {"ratio",6} | {"ours T=1",9} {"GenAI T=1",9} {"ratio",6} | {"GenAI fed T=1",13} {"ratio",6}");
            var rng = new Random(11);
            foreach (int b in batches)
            {
                var prompts = Enumerable.Range(0, b).Select(_ => Enumerable.Range(0, rng.Next(Math.Max(1, promptLen / 2), promptLen + 1))
                    .Select(_ => rng.Next(3, cfg.VocabSize)).ToArray()).ToArray();
                double Tps(Rlhf.Inference.Services.IRolloutService e, SamplingOptions o)
                {
                    var requests = prompts.Select((p, i) => RolloutRequest.FromIds(p, o with { Seed = (ulong)i })).ToList();
                    e.Generate([.. requests.Take(Math.Min(b, 4)).Select(q => q with { Sampling = o with { MaxNewTokens = 4 } })]);   // warm-up
                    double best = 0;
                    for (int k = 0; k < repeats; k++)
                    {
                        var t = Stopwatch.StartNew();
                        int tokens = e.Generate(requests).Sum(x => x.ResponseIds.Length);
                        best = Math.Max(best, tokens / t.Elapsed.TotalSeconds);
                    }
                    return best;
                }
                var greedy = new SamplingOptions { Temperature = 0f, MaxNewTokens = newTokens };
                var sample = new SamplingOptions { Temperature = 1f, MaxNewTokens = newTokens };
                double og = Tps(ours, greedy), gg = Tps(genai, greedy), os = Tps(ours, sample), gs = Tps(genai, sample), fs = Tps(fed, sample);
                figures[$"{keyPrefix}tokens_per_s.ort.greedy.{b}"] = og;
                figures[$"{keyPrefix}tokens_per_s.genai.greedy.{b}"] = gg;
                figures[$"{keyPrefix}tokens_per_s.ort.sample.{b}"] = os;
                figures[$"{keyPrefix}tokens_per_s.genai.sample.{b}"] = gs;
                figures[$"{keyPrefix}tokens_per_s.genai_inputs.sample.{b}"] = fs;
                w.WriteLine($"{b,5} | {og,11:F0} {gg,12:F0} {gg / og,5:F2}x | {os,9:F0} {gs,9:F0} {gs / os,5:F2}x | {fs,13:F0} {fs / os,5:F2}x");
            }
            double rebuildMs = GenAiRebuildFromMemoryMs(model, cfg, dir, graph);
            figures[keyPrefix + "sync_seconds.genai_rebuild"] = rebuildMs / 1000;
            w.WriteLine($"weight sync: GenAI fed {snapMs + feedMs:F1} ms (snapshot copy {snapMs:F1} ms + handing {snapshot.Buffers.Count} buffers to the engine {feedMs:F2} ms; " +
                        $"each generator then reads them in place); GenAI rebuilt from memory (model bytes + Config.AddModelData + new Model) {rebuildMs:F0} ms");
        }
        finally
        {
            try { Directory.Delete(inputsDir, true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// The other file-free GenAI update: serialise the graph with the new weights inline, hand the bytes to
    /// <c>Config.AddModelData</c> (pinned until the model is built) and build a new <c>Model</c>. Milliseconds.
    /// </summary>
    static double GenAiRebuildFromMemoryMs(LlamaForCausalLM model, ModelConfig cfg, string dir, GraphKind graph)
    {
        var sw = Stopwatch.StartNew();
        var weights = model.state_dict();
        var builder = graph == GraphKind.ContribGqa ? LlamaContribGraph.Build(cfg, weights) : LlamaGraph.Build(cfg, weights);
        byte[] bytes = Google.Protobuf.MessageExtensions.ToByteArray(builder.ToModel());
        var pin = System.Runtime.InteropServices.GCHandle.Alloc(bytes, System.Runtime.InteropServices.GCHandleType.Pinned);
        try
        {
            using var config = new Microsoft.ML.OnnxRuntimeGenAI.Config(dir);
            config.AddModelData(PolicyExport.ModelFile, bytes);
            using var rebuilt = new Microsoft.ML.OnnxRuntimeGenAI.Model(config);
            return sw.Elapsed.TotalMilliseconds;
        }
        finally
        {
            pin.Free();
        }
    }

    /// <summary>
    /// Forward FLOPs of generating <paramref name="newTokens"/> after prompts of the given lengths (multiply-add = 2):
    /// 2·(matmul weights) per token plus attention 4·L·heads·D·context per token.
    /// </summary>
    static double Flops(ModelConfig c, int[] promptLens, int newTokens)
    {
        double d = c.HeadDim, h = c.HiddenSize;
        double perLayer = h * c.NumAttentionHeads * d * 2 + h * c.NumKeyValueHeads * d * 2 + 3 * h * c.IntermediateSize;
        double matmul = 2 * (c.NumHiddenLayers * perLayer + h * c.VocabSize);
        double total = 0;
        int pMax = promptLens.Max();
        foreach (int p in promptLens)
        {
            int tokens = p + newTokens;
            total += tokens * matmul;
            for (int t = 0; t < newTokens; t++) total += 4.0 * c.NumHiddenLayers * c.NumAttentionHeads * d * (pMax + t);
            total += 4.0 * c.NumHiddenLayers * c.NumAttentionHeads * d * p * p / 2;
        }
        return total;
    }

    /// <summary>GFLOP/s of one ORT MatMul [512, 1024] x [1024, 1024] (best of 10 after warm-up).</summary>
    static double MatMulPeak(int threads)
    {
        const int M = 512, K = 1024, N = 1024;
        string dir = Path.Combine(Path.GetTempPath(), $"rlhf-matmul-{Guid.NewGuid():N}");
        try
        {
            var b = new GraphBuilder("matmul_peak");
            var rng = new Random(1);
            string w = b.Initializer("w", [.. Enumerable.Range(0, K * N).Select(_ => (float)rng.NextDouble() - 0.5f)], K, N);
            b.AddNode("MatMul", [b.Input("x", DataType.Float, M, K), w], ["y"]);
            b.Output("y", DataType.Float, M, N);
            var saved = b.Save(dir);
            using var so = OnnxModelPath.Options(threads);
            using var session = new InferenceSession(saved.ModelPath, so);
            var x = Enumerable.Range(0, M * K).Select(_ => (float)rng.NextDouble()).ToArray();
            using var input = OrtValue.CreateTensorValueFromMemory(x, [M, K]);
            using var run = new RunOptions();
            double best = double.MaxValue;
            for (int i = 0; i < 13; i++)
            {
                var sw = Stopwatch.StartNew();
                using var outputs = session.Run(run, ["x"], [input], ["y"]);
                if (i >= 3) best = Math.Min(best, sw.Elapsed.TotalSeconds);
            }
            return 2.0 * M * K * N / best / 1e9;
        }
        finally
        {
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }
}

/// <summary>The `--json FILE` of the bench commands: figures by key, indented, written atomically.</summary>
internal static class BenchFigures
{
    /// <summary>Writes <paramref name="figures"/> to <paramref name="file"/>.</summary>
    public static void Write(string file, IDictionary<string, double> figures) =>
        AtomicFile.WriteAllText(file, System.Text.Json.JsonSerializer.Serialize(figures, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
}
