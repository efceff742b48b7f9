using System.Text.Json.Nodes;
using Rlhf.Export.Hf;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

/// <summary>LoRA: the math against hand computation, the adapted model against its merge, the base shared, the PEFT layout.</summary>
public sealed class LoraTests
{
    static LoraSettings Settings(int r = 4, params string[] targets) =>
        new(r, 8, 0, targets.Length == 0 ? LoraSettings.AllLinear : targets);

    [Fact]
    public void ForwardAndMergeMatchAHandComputation()
    {
        // x [1, 2], W [2, 2], b [2], A [1, 2], B [2, 1], s = 0.5:
        // W x = [1·1 + 2·2, 3·1 + 4·2] = [5, 11]; A x = 1·1 + (−1)·2 = −1; B A x = [−2, 3]; y = [5, 11] + [1, 0] + 0.5·[−2, 3] = [5, 12.5]
        using var x = tensor(new float[] { 1, 2 }, [1, 2]);
        using var w = tensor(new float[] { 1, 2, 3, 4 }, [2, 2]);
        using var b = tensor(new float[] { 1, 0 });
        using var a = tensor(new float[] { 1, -1 }, [1, 2]);
        using var bm = tensor(new float[] { 2, -3 }, [2, 1]);
        using var y = Lora.Forward(x, w, b, a, bm, 0.5);
        Assert.Equal(new float[] { 5, 12.5f }, y.data<float>().ToArray());
        // W' = W + 0.5·B A = [[1 + 1, 2 − 1], [3 − 1.5, 4 + 1.5]]
        using var merged = Lora.Merge(w, a, bm, 0.5);
        Assert.Equal(new float[] { 2, 1, 1.5f, 5.5f }, merged.data<float>().ToArray());
        Assert.Equal(1 / Math.Sqrt(64), Lora.InitBound(64));
    }

    [Fact]
    public void FreshAdaptersChangeNothingAndTheMergedWeightsGiveTheAdaptedLogits()
    {
        var cfg = TinyModels.Config();
        using var m = TinyModels.Randomized(cfg, 5);
        long[] ids = [1, 7, 3, 9, 4, 2];
        using var before = TinyModels.RowLogits(m, ids);
        var lora = m.AttachLora(Settings(), seed: 1, baseModel: "base");
        Assert.Equal(7 * cfg.NumHiddenLayers, lora.Items.Count);
        using (var fresh = TinyModels.RowLogits(m, ids)) Assert.True(TinyModels.Same(before, fresh));   // B = 0: the adapted model starts as the base
        Assert.All(lora.Items, i => Assert.Equal(0f, i.Adapter.B.abs().max().item<float>()));
        Assert.All(lora.Items, i => Assert.True(i.Adapter.A.abs().max().item<float>() <= Lora.InitBound(i.Adapter.A.shape[1])));

        RandomizeB(lora, 7);
        using var adapted = TinyModels.RowLogits(m, ids);
        Assert.True(TinyModels.MaxAbsDiff(adapted, before) > 1e-3);
        using var plain = LlamaForCausalLM.Create(cfg, CPU, ScalarType.Float32, 0);
        using (var merged = ModelWeights.Of(m))
        using (no_grad())
            foreach (var (name, p) in plain.state_dict()) p.copy_(merged.State[name]);
        plain.eval();
        using var fromMerged = TinyModels.RowLogits(plain, ids);
        Assert.True(TinyModels.MaxAbsDiff(adapted, fromMerged) < 1e-5);

        // the reference: the base over the same storage, adapters off
        using var reference = LlamaForCausalLM.SharingBase(m);
        using var refLogits = TinyModels.RowLogits(reference, ids);
        Assert.True(TinyModels.Same(before, refLogits));
        lora.Enabled = false;
        using (var off = TinyModels.RowLogits(m, ids)) Assert.True(TinyModels.Same(before, off));
        var baseState = m.state_dict();
        using (no_grad())   // same storage (last: x + 1 − 1 need not be x): a change to the actor's base shows in the reference
            foreach (var (name, p) in reference.state_dict())
            {
                baseState[name].add_(1);
                Assert.True(TinyModels.Same(baseState[name], p), name);
                baseState[name].sub_(1);
            }
    }

    [Fact]
    public void OnlyTheAdaptersAndTheHeadTrain()
    {
        var cfg = TinyModels.Config();
        using var lm = LlamaForCausalLM.Create(cfg, CPU, ScalarType.Float32, 1);
        lm.AttachLora(Settings(2, "q_proj", "v_proj"), 1, null);
        var trainable = Optimization.Trainable(lm).Select(p => p.name).ToList();
        Assert.Equal(cfg.NumHiddenLayers * 4, trainable.Count);
        Assert.All(trainable, n => Assert.Matches(@"^model\.layers\.\d+\.self_attn\.[qv]_proj\.lora_[AB]\.weight$", n));
        Assert.All(lm.parameters(), p => Assert.False(p.requires_grad));
        using var opt = Optimization.AdamW(lm, new AdamWSettings(1e-3, 0, 0.9, 0.95, 1e-8));
        Assert.Equal(cfg.NumHiddenLayers * 4, opt.parameters().Count());

        using var rm = LlamaForSequenceClassification.Create(cfg, CPU, ScalarType.Float32, 1);
        rm.AttachLora(Settings(2), 1, null);
        var rmTrainable = Optimization.Trainable(rm).Select(p => p.name).ToList();
        Assert.Contains("score.weight", rmTrainable);
        Assert.Equal(1 + cfg.NumHiddenLayers * 14, rmTrainable.Count);
    }

    [Fact]
    public void AdaptersAreSavedInThePeftLayoutAndLoadBack()
    {
        var cfg = TinyModels.Config();
        string dir = Directory.CreateTempSubdirectory().FullName;
        using var rm = LlamaForSequenceClassification.Create(cfg, CPU, ScalarType.Float32, 1);
        var lora = rm.AttachLora(new LoraSettings(4, 16, 0.05, ["q_proj", "v_proj", "down_proj"]), 1, "runs/sft");
        RandomizeB(lora, 3);
        rm.SavePretrained(dir);
        string adapter = Path.Combine(dir, PeftAdapter.FolderName);

        // PEFT's LoraConfig fields and names (peft.LoraConfig / PeftConfig.save_pretrained)
        var c = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!.AsObject();
        Assert.Equal("LORA", (string?)c["peft_type"]);
        Assert.Equal("SEQ_CLS", (string?)c["task_type"]);
        Assert.Equal(4, (int)c["r"]!);
        Assert.Equal(16.0, (double)c["lora_alpha"]!);
        Assert.Equal(0.05, (double)c["lora_dropout"]!);
        Assert.Equal(["q_proj", "v_proj", "down_proj"], c["target_modules"]!.AsArray().Select(t => (string)t!).ToArray());
        Assert.Equal("none", (string?)c["bias"]);
        Assert.False((bool)c["fan_in_fan_out"]!);
        Assert.Equal(["score"], c["modules_to_save"]!.AsArray().Select(t => (string)t!).ToArray());
        Assert.Equal("runs/sft", (string?)c["base_model_name_or_path"]);

        // get_peft_model_state_dict's names: base_model.model.<module path>.lora_A.weight [r, in], lora_B.weight [out, r]
        var header = SafeTensors.ReadHeader(Path.Combine(adapter, "adapter_model.safetensors"));
        var shapes = header.Tensors.ToDictionary(t => t.Name, t => t.Shape);
        long h = cfg.HiddenSize, qOut = cfg.NumAttentionHeads * cfg.HeadDim, kvOut = cfg.NumKeyValueHeads * cfg.HeadDim;
        Assert.Equal([4, h], shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]);
        Assert.Equal([qOut, 4], shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]);
        Assert.Equal([kvOut, 4], shapes["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]);
        Assert.Equal([4, (long)cfg.IntermediateSize], shapes["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]);
        Assert.Equal([1, h], shapes["base_model.model.score.weight"]);
        Assert.Equal(cfg.NumHiddenLayers * 6 + 1, shapes.Count);
        Assert.Equal(new LoraSettings(4, 16, 0.05, ["q_proj", "v_proj", "down_proj"]).TargetModules, PeftAdapter.ReadSettings(adapter).TargetModules);

        // the folder's own weights are merged; base + adapter reproduce the same model
        using var merged = LlamaForSequenceClassification.FromPretrained(dir, CPU, ScalarType.Float32);
        using var again = LlamaForSequenceClassification.Create(cfg, CPU, ScalarType.Float32, 1);
        again.AttachLora(PeftAdapter.ReadSettings(adapter), 99, null, from: dir);   // only the adapter and head are read from dir
        using var ids = TinyModels.Ids([1, 5, 9, 3]);
        using var mask = ones_like(ids);
        using var noGrad = no_grad();
        rm.eval(); again.eval();
        using var v0 = rm.Values(ids, mask);
        using var v1 = again.Values(ids, mask);
        using var v2 = merged.Values(ids, mask);
        Assert.True(TinyModels.Same(v0, v1));
        Assert.True(TinyModels.MaxAbsDiff(v0, v2) < 1e-5);
    }

    [Fact]
    public void MergeOfACheckpointEqualsTheMergedStageOutput()
    {
        // a checkpoint (base + adapter/) merged by `rlhf merge` gives the weights the stage itself writes
        var cfg = TinyModels.Config();
        string root = Directory.CreateTempSubdirectory().FullName;
        using var m = TinyModels.Randomized(cfg, 2);
        RandomizeB(m.AttachLora(Settings(3, "k_proj", "up_proj"), 1, "base"), 4);
        m.SavePretrained(Path.Combine(root, "checkpoint"), merged: false);
        m.SavePretrained(Path.Combine(root, "out"));
        Assert.Equal(2 * cfg.NumHiddenLayers, Rlhf.Training.Cli.MergeCommand.Merge(Path.Combine(root, "checkpoint"),
            Path.Combine(root, "checkpoint", "adapter"), Path.Combine(root, "merged")));
        var expected = HfFolder.ReadWeights(Path.Combine(root, "out"));
        var merged = HfFolder.ReadWeights(Path.Combine(root, "merged"));
        var stored = HfFolder.ReadWeights(Path.Combine(root, "checkpoint"));
        Assert.Equal(expected.Keys.Order(), merged.Keys.Order());
        foreach (var (name, t) in expected) Assert.True(TinyModels.Same(t, merged[name]), name);
        Assert.False(TinyModels.Same(expected["model.layers.0.self_attn.k_proj.weight"], stored["model.layers.0.self_attn.k_proj.weight"]));
        Assert.True(TinyModels.Same(expected["model.layers.0.self_attn.q_proj.weight"], stored["model.layers.0.self_attn.q_proj.weight"]));
    }

    [Fact]
    public void ConfigKeysAreValidatedWithWhatToChange()
    {
        Assert.Empty(LoraSettings.Problems(0, 0, 0, []));
        Assert.Contains(LoraSettings.Problems(8, 16, 0, ["qkv"]), p => p.Contains("'qkv' is not one of q_proj", StringComparison.Ordinal));
        Assert.Contains(LoraSettings.Problems(-1, 16, 0, ["q_proj"]), p => p.Contains("lora_rank", StringComparison.Ordinal));
        var e = Assert.Throws<InvalidDataException>(() => new Rlhf.Training.Sft.SftConfig { LoraRank = 4, LoraAlpha = 0 }.Validate());
        Assert.Contains("lora_alpha must be > 0", e.Message, StringComparison.Ordinal);
    }

    internal static void RandomizeB(LoraAdapters lora, long seed)
    {
        using var noGrad = no_grad();
        using var gen = new torch.Generator((ulong)seed, CPU);
        foreach (var (_, a) in lora.Items)
        {
            using var r = randn(a.B.shape, generator: gen);
            a.B.copy_(0.1 * r);
        }
    }
}
