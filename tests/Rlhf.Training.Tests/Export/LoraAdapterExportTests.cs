using Microsoft.ML.OnnxRuntime;
using Rlhf.Export;
using Rlhf.Export.Hf;
using Rlhf.Export.Onnx;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Tests.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Export;

/// <summary>
/// LoRA as ONNX Runtime runs adapters: the base exported once with LoRA inputs, the adapter as an <c>.onnx_adapter</c>
/// file. Fed by ORT's <c>OrtLoraAdapter</c> the graph gives the merged model's logits; without it, the base model's;
/// loaded by real GenAI (<c>Adapters</c>) it gives the merged model's greedy tokens.
/// </summary>
public sealed class LoraAdapterExportTests
{
    static readonly long[] Row = [1, 7, 3, 9, 4, 11, 5];

    /// <summary>Prefill logits [L·V] of <see cref="Row"/> from an exported GQA folder, with the adapter file active when given.</summary>
    static float[] OrtLogits(string folder, ModelConfig cfg, string? adapterFile)
    {
        using var session = new InferenceSession(Path.Combine(folder, PolicyExport.ModelFile));
        var names = new List<string> { "input_ids", "attention_mask" };
        var values = new List<OrtValue>
        {
            OrtValue.CreateTensorValueFromMemory((long[])Row.Clone(), [1, Row.Length]),
            OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, Row.Length).ToArray(), [1, Row.Length]),
        };
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
            foreach (string kind in new[] { "key", "value" })
            {
                names.Add($"past_key_values.{i}.{kind}");
                values.Add(OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), [1, cfg.NumKeyValueHeads, 0, cfg.HeadDim]));
            }
        using var runOptions = new RunOptions();
        using var adapter = adapterFile is null ? null : OrtLoraAdapter.Create(adapterFile, null);
        if (adapter is not null) runOptions.AddActiveLoraAdapter(adapter);
        try
        {
            using var outs = session.Run(runOptions, names, values, ["logits"]);
            return outs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        finally { foreach (var v in values) v.Dispose(); }
    }

    /// <summary>Greedy continuation of <see cref="Row"/> by real GenAI, with the adapter file active when given.</summary>
    static int[] GenAiGreedy(string folder, string? adapterFile, int newTokens)
    {
        using var model = new Microsoft.ML.OnnxRuntimeGenAI.Model(folder);
        using var adapters = new Microsoft.ML.OnnxRuntimeGenAI.Adapters(model);
        if (adapterFile is not null) adapters.LoadAdapter(adapterFile, "policy");
        using var gp = new Microsoft.ML.OnnxRuntimeGenAI.GeneratorParams(model);
        gp.SetSearchOption("max_length", Row.Length + newTokens);
        gp.SetSearchOption("do_sample", false);
        int[] tokens;
        using (var generator = new Microsoft.ML.OnnxRuntimeGenAI.Generator(model, gp))
        {
            if (adapterFile is not null) generator.SetActiveAdapter(adapters, "policy");
            generator.AppendTokens([.. Row.Select(x => (int)x)]);
            while (!generator.IsDone()) generator.GenerateNextToken();
            tokens = generator.GetSequence(0).ToArray();
        }
        if (adapterFile is not null) adapters.UnloadAdapter("policy");
        return tokens;
    }

    static double MaxAbsDiff(float[] a, float[] b) => a.Zip(b).Max(p => Math.Abs(p.First - p.Second));

    [Fact]
    public void TheAdapterOnTheLoraInputGraphGivesTheMergedModelInOrtAndInGenAi()
    {
        var cfg = Rlhf.Tests.Shared.TinyLlama.Config("llama", headDim: 16);
        using var m = TinyModels.Randomized(cfg, 5);
        string dir = Directory.CreateTempSubdirectory("rlhf-lora-export-").FullName;
        try
        {
            m.SavePretrained(Path.Combine(dir, "base"));
            var lora = m.AttachLora(new LoraSettings(4, 8, 0, LoraSettings.AllLinear), seed: 1, baseModel: "base");
            LoraTests.RandomizeB(lora, 7);
            m.SavePretrained(Path.Combine(dir, "run"));   // merged weights and adapter/ in PEFT's layout
            var merged = ExportStage.ExportPolicy(m, Path.Combine(dir, "merged"), GraphKind.ContribGqa, new ExportOptions(), parity: false);
            // what `rlhf export --model base --adapter run/adapter` does
            var withInputs = ExportStage.FromHfFolder(Path.Combine(dir, "base"), Path.Combine(dir, "lora"), ModelKind.Policy, null, overwrite: false,
                adapterFolder: Path.Combine(dir, "run", PeftAdapter.FolderName));
            string adapter = Path.Combine(withInputs.Folder, LoraAdapterExport.AdapterFile);
            // the export measured its parity with the adapter fed, against TorchSharp with the adapters on
            Assert.InRange(withInputs.Manifest.Parity!.MaxAbsDiff, 0, 1e-4);
            Assert.Contains(LoraAdapterExport.AdapterFile, withInputs.Manifest.Parity.Cases);
            Assert.Equal("TORT", System.Text.Encoding.ASCII.GetString(File.ReadAllBytes(adapter), 4, 4));

            float[] mergedLogits = OrtLogits(merged.Folder, cfg, null);
            float[] adapted = OrtLogits(withInputs.Folder, cfg, adapter);
            float[] baseOnly = OrtLogits(withInputs.Folder, cfg, null);
            Assert.True(MaxAbsDiff(adapted, mergedLogits) < 1e-4, $"with the adapter: {MaxAbsDiff(adapted, mergedLogits):E2} from the merged model");
            Assert.True(MaxAbsDiff(baseOnly, mergedLogits) > 1e-2, "the adapter should change the logits");
            // without the adapter the graph is the base model: TorchSharp's logits with the adapters off
            lora.Enabled = false;
            float[] torchBase;
            using (var t = TinyModels.RowLogits(m, Row)) torchBase = t.data<float>().ToArray();
            lora.Enabled = true;
            Assert.True(MaxAbsDiff(baseOnly, torchBase) < 1e-4, $"without the adapter: {MaxAbsDiff(baseOnly, torchBase):E2} from the base model");

            // our engine over the LoRA-input graph: the adapter pushed alone (as InferenceServices.Sync sends it) is fed on
            // every run; the base layout lists no LoRA inputs; a push mixing factors and base weights, or of the wrong shape, is refused
            using (var engine = Rlhf.Inference.Rollout.RolloutEngine.OpenDecoder(withInputs.Folder, 1))
            {
                Assert.True(engine.WeightFormat!.Lora);
                Assert.DoesNotContain(engine.WeightLayout.Keys, Rlhf.Inference.Services.PolicyWeightFormat.IsLoraName);
                int[] ids = [.. Row.Select(x => (int)x)];
                Assert.True(MaxAbsDiff(engine.Logits(ids), baseOnly) < 1e-5);
                using var push = Rlhf.Training.Common.InferenceServices.Snapshot(engine, m, 1);
                Assert.All(push.Manifest, t => Assert.True(Rlhf.Inference.Services.PolicyWeightFormat.IsLoraName(t.Name), t.Name));
                Assert.Equal(lora.Items.Sum(i => (i.Adapter.A.numel() + i.Adapter.B.numel()) * 4), push.TotalBytes);
                engine.UpdateWeights(push.Buffers, version: 1);
                Assert.Equal(1UL, engine.WeightsVersion);
                Assert.True(MaxAbsDiff(engine.Logits(ids), mergedLogits) < 1e-4, "the pushed adapter should give the merged model");
                var mixed = push.Buffers.ToDictionary();
                mixed["model.norm.weight"] = new Rlhf.Inference.Rollout.WeightBuffer("model.norm.weight", [cfg.HiddenSize], new float[cfg.HiddenSize]);
                Assert.Contains("adapter alone", Assert.Throws<ArgumentException>(() => engine.UpdateWeights(mixed)).Message);
                string a0 = "model.layers.0.self_attn.q_proj.lora_A.weight";
                var wrong = new Dictionary<string, Rlhf.Inference.Rollout.WeightBuffer> { [a0] = new(a0, [cfg.HiddenSize + 1, 4], new float[(cfg.HiddenSize + 1) * 4]) };
                Assert.Contains("the graph takes", Assert.Throws<ArgumentException>(() => engine.UpdateWeights(wrong)).Message);
            }

            int[] mergedTokens = GenAiGreedy(merged.Folder, null, 12);
            Assert.Equal(mergedTokens, GenAiGreedy(withInputs.Folder, adapter, 12));
            Assert.NotEqual(mergedTokens, GenAiGreedy(withInputs.Folder, null, 12));   // the base model continues otherwise
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void TheAdapterFileHoldsItsTensorsAsOrtReadsThemAndRefusesAMismatchedShape()
    {
        // a graph y = x·W + (x·A)·B with A, B LoRA inputs of rank 0 by default, run with and without a hand-made adapter
        var b = new GraphBuilder("lora_probe", GraphBuilder.DefaultOpset);
        string x = b.Input("x", Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType.Float, 1, 3);
        string w = b.Initializer("w", new float[] { 1, 0, 0, 1, 1, 1 }, 3, 2);
        string a = b.InputWithDefault("m.lora_A.weight", [3, LlamaContribGraph.LoraRank], [], 3, 0);
        string bm = b.InputWithDefault("m.lora_B.weight", [LlamaContribGraph.LoraRank, 2], [], 0, 2);
        b.AddNode("Add", [b.Node("MatMul", [x, w]), b.Node("MatMul", [b.Node("MatMul", [x, a]), bm])], ["y"]);
        b.Output("y", Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType.Float, 1, 2);
        string dir = Directory.CreateTempSubdirectory("rlhf-adapter-file-").FullName;
        try
        {
            b.Save(dir, "probe.onnx");
            // rank 1: A = [1, 2, 3]ᵀ, B = [10, −1]
            string file = Path.Combine(dir, "probe" + OnnxAdapterFile.Extension);
            OnnxAdapterFile.Write(file, [new("m.lora_A.weight", [3, 1], [1, 2, 3]), new("m.lora_B.weight", [1, 2], [10, -1])]);
            using var session = new InferenceSession(Path.Combine(dir, "probe.onnx"));
            float[] Run(string? adapterFile)
            {
                using var xv = OrtValue.CreateTensorValueFromMemory(new float[] { 1, 2, 3 }, [1, 3]);
                using var options = new RunOptions();
                using var adapter = adapterFile is null ? null : OrtLoraAdapter.Create(adapterFile, null);
                if (adapter is not null) options.AddActiveLoraAdapter(adapter);
                using var outs = session.Run(options, ["x"], [xv], ["y"]);
                return outs[0].GetTensorDataAsSpan<float>().ToArray();
            }
            // x·W = [1·1 + 3·1, 2·1 + 3·1] = [4, 5]; x·A = 14; (x·A)·B = [140, −14]
            Assert.Equal([4f, 5f], Run(null));
            Assert.Equal([144f, -9f], Run(file));
            Assert.Throws<ArgumentException>(() => OnnxAdapterFile.Build([new("m.lora_A.weight", [3, 2], [1, 2, 3])]));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
