using System.CommandLine;
using Rlhf.Export;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.RewardModel;
using TorchSharp;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf export</c>: a Hugging Face folder to an ONNX model folder (GenAI format for policies).</summary>
internal static class ExportCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder (llama, qwen2 or mistral; config.json + safetensors), ours or any other.", Required = true };
        var output = new Option<string>("--out") { Description = "Output folder (must not exist unless --overwrite).", Required = true };
        var kind = new Option<string>("--kind") { Description = "policy (causal LM, GenAI folder), reward or value (needs score.weight).", DefaultValueFactory = _ => "policy" };
        var graph = new Option<string?>("--graph") { Description = "plain (portable ONNX ops, any padding) or gqa (ONNX Runtime GroupQueryAttention, right padding; default when head_dim % 16 == 0)." };
        var weights = new Option<string>("--weights") { Description = "Policies: initializers (default; a plain GenAI folder) or inputs (weights are required graph inputs fed at run time, as `--engine genai` does after every PPO update; no parity is measured).", DefaultValueFactory = _ => "initializers" };
        var precision = new Option<string>("--precision") { Description = "Policies: fp32 (default) or int8 (weight-only int8 projections and LM head, gqa graph; for rollout replicas: `rlhf serve rollout` takes float32 weight pushes and the trainer sends int8 in process).", DefaultValueFactory = _ => "fp32" };
        var adapter = new Option<string?>("--adapter") { Description = "Policies: a PEFT LoRA adapter folder of --model (e.g. a LoRA run's adapter/): export the base once as the gqa graph with LoRA inputs and write the adapter as adapter.onnx_adapter, which ONNX Runtime (OrtLoraAdapter) and GenAI (Adapters) load." };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace an existing output folder." };
        var cmd = new Command("export", "Export a model folder to ONNX (model.onnx + model.onnx.data, genai_config.json, tokenizer files, rlhf_manifest.json with ORT-vs-TorchSharp parity).");
        foreach (Option o in new Option[] { model, output, kind, graph, weights, precision, adapter, overwrite }) cmd.Options.Add(o);
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var k = ExportNames.ParseKind(r.GetValue(kind) ?? "policy");
            GraphKind? g = r.GetValue(graph) is string s ? ExportNames.ParseGraph(s) : null;
            var w = ExportNames.ParseWeights(r.GetValue(weights) ?? "initializers");
            var pr = ExportNames.ParsePrecision(r.GetValue(precision) ?? "fp32");
            var result = ExportStage.FromHfFolder(r.GetValue(model)!, r.GetValue(output)!, k, g, r.GetValue(overwrite), w, pr, r.GetValue(adapter));
            var m = result.Manifest;
            Console.WriteLine($"exported {m.Kind} ({m.Graph} graph, {m.Precision}, weights as {m.Weights}) to {result.Folder}: {m.OnnxBytes / 1e6:F1} MB in {m.ExportSeconds:F1} s; " +
                              (m.Parity is { } p ? $"parity max |ORT - TorchSharp| = {p.MaxAbsDiff:E2}" : "parity not measured") +
                              (r.GetValue(adapter) is not null ? $"; adapter: {Path.Combine(result.Folder, LoraAdapterExport.AdapterFile)}" : ""));
            return 0;
        }));
        return cmd;
    }
}

/// <summary><c>rlhf bench export</c>: ORT (both graphs) vs TorchSharp forward time, export time and size.</summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var repeats = new Option<int>("--repeats") { Description = "Timed repetitions per figure (median reported).", DefaultValueFactory = _ => 5 };
        var threads = new Option<int?>("--threads") { Description = "Threads for ONNX Runtime and TorchSharp (default: all cores)." };
        var small = new Option<bool>("--tiny-only") { Description = "Skip the ~100M-parameter config." };
        var export = new Command("export", "ORT forward time of the plain and GQA graphs vs TorchSharp at batch 1 and 32 (prefill of 32 tokens, one decode step on a 32-token cache), export time and size, for models/tiny and a ~100M random config.");
        foreach (Option o in new Option[] { repeats, threads, small }) export.Options.Add(o);
        export.SetAction(r => RlhfCommand.Guard(() =>
        {
            var configs = new List<(string, Rlhf.Export.Hf.ModelConfig)> { ("tiny", ExportBench.TinyConfig()) };
            if (!r.GetValue(small)) configs.Add(("100M", ExportBench.Config100M));
            var options = new BenchOptions { Repeats = r.GetValue(repeats), Threads = r.GetValue(threads) ?? Environment.ProcessorCount };
            var rows = ExportBench.Run(configs, options, row => Console.Error.WriteLine($"  {row.Config} {row.Engine} {row.Measure} b={row.Batch}: {row.Value:F1} {row.Unit}"));
            Console.Write(ExportBench.Format(rows));
            return 0;
        }));
        return new Command("bench", "Benchmarks that print their figures side by side: `bench export` (graph variants vs TorchSharp forward), `bench rollout` (ONNX Runtime engine vs TorchSharp generation), `bench serve` (weight push, tokens/s and PPO iterations through rlhf serve replicas vs in process), `bench rm` (RM training step, one padded batch vs length-sorted chunks vs packed rows), `bench train` (training-step tokens/s, fp32 vs bf16) `bench ppo` (seconds per phase of a PPO iteration, fp32/bf16 × fp32/int8 rollouts) and `bench memory` (peak RSS and seconds per PPO iteration, full fine-tuning vs LoRA ranks, with and without activation checkpointing).")
            { export, RolloutBenchCommand.Create(), ServeBenchCommand.Create(), RmBenchCommand(), TrainBenchCommand.Create(), PpoBenchCommand.Create(), MemoryBenchCommand.Create() };
    }

    /// <summary><c>rlhf bench rm</c>: see <see cref="RmBench"/>.</summary>
    static Command RmBenchCommand()
    {
        var model = new Option<string?>("--model") { Description = "HF folder to start the RM from (an SFT model); default: a fresh tiny model with a tokenizer trained on the default task." };
        var k = new Option<int>("--k") { Description = "Responses per prompt.", DefaultValueFactory = _ => 8 };
        var ppb = new Option<int>("--prompts-per-batch") { Description = "Prompts (groups of K) per step.", DefaultValueFactory = _ => 4 };
        var steps = new Option<int>("--steps") { Description = "Timed steps per layout (median reported).", DefaultValueFactory = _ => 20 };
        var threads = new Option<int>("--threads") { Description = "Intra-op threads (0 = all cores).", DefaultValueFactory = _ => 0 };
        var cmd = new Command("rm", "Milliseconds per RM training step: all K·P sequences in one right-padded batch vs length-sorted chunks of 16, 8 and 4 vs packed rows (what the trainer uses).") { model, k, ppb, steps, threads };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            Common.DeviceSelector.SetThreads(r.GetValue(threads));
            var rows = RmBench.Run(r.GetValue(model), r.GetValue(k), r.GetValue(ppb), Math.Max(1, r.GetValue(steps)), [16, 8, 4]);
            Console.WriteLine($"RM training step, {r.GetValue(ppb)} prompts x K={r.GetValue(k)} sequences, {torch.get_num_threads()} threads");
            Console.WriteLine($"{"layout",-18} {"ms/step",8} {"seq/s",8} {"padding",8} {"speedup",8}");
            foreach (var row in rows)
                Console.WriteLine($"{row.Layout,-18} {row.MsPerStep,8:F1} {row.SequencesPerSecond,8:F0} {row.PaddedShare,8:P0} {row.Speedup,7:F2}x");
            return 0;
        }));
        return cmd;
    }
}
