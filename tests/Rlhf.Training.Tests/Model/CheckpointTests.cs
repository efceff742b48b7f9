using System.Text.Json.Nodes;
using Rlhf.Export.Hf;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

public sealed class CheckpointTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-ckpt-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string Folder(string name) => Path.Combine(_dir, name);

    [Theory]
    [InlineData("llama", false)]
    [InlineData("qwen2", true)]
    public void F32RoundTripIsBitExact(string type, bool tied)
    {
        var m = TinyModels.Randomized(TinyModels.Config(type, tied: tied), 3);
        m.SavePretrained(Folder("m"));
        Assert.True(File.Exists(Path.Combine(Folder("m"), "config.json")));
        Assert.True(File.Exists(Path.Combine(Folder("m"), "model.safetensors")));
        Assert.Equal(tied, !SafeTensors.ReadHeader(Path.Combine(Folder("m"), "model.safetensors")).Tensors.Any(t => t.Name == "lm_head.weight"));
        Assert.Empty(Directory.GetDirectories(_dir, ".*tmp*"));
        var back = LlamaForCausalLM.FromPretrained(Folder("m"), torch.CPU, ScalarType.Float32);
        Assert.Equal(m.Config.ToJson().ToJsonString(), back.Config.ToJson().ToJsonString());
        var a = m.state_dict();
        foreach (var (k, v) in back.state_dict()) Assert.True(TinyModels.Same(a[k], v), k);
    }

    [Fact]
    public void Bf16RoundTripEqualsCast()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 3);
        m.SavePretrained(Folder("bf"), ScalarType.BFloat16);
        Assert.Equal("bfloat16", ModelConfig.Load(Path.Combine(Folder("bf"), "config.json")).TorchDtype);
        var back = LlamaForCausalLM.FromPretrained(Folder("bf"), torch.CPU, ScalarType.Float32);
        var a = m.state_dict();
        foreach (var (k, v) in back.state_dict())
            Assert.True(TinyModels.Same(a[k].to(ScalarType.BFloat16).to(ScalarType.Float32), v), k);
        var asBf = LlamaForCausalLM.FromPretrained(Folder("bf"), torch.CPU, ScalarType.BFloat16);
        foreach (var (k, v) in asBf.state_dict()) Assert.True(TinyModels.Same(a[k].to(ScalarType.BFloat16), v), k);
    }

    [Fact]
    public void ShardedSaveLoadsAndOverwriteReplacesLayout()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 4);
        string f = Folder("sh");
        m.SavePretrained(f);
        File.WriteAllText(Path.Combine(f, "tokenizer.json"), "{}");
        m.SavePretrained(f, ScalarType.Float32, maxShardBytes: 10_000);
        Assert.True(File.Exists(Path.Combine(f, HfFolder.IndexFile)));
        Assert.False(File.Exists(Path.Combine(f, HfFolder.WeightsFile)));
        Assert.True(File.Exists(Path.Combine(f, "tokenizer.json")));
        Assert.True(Directory.GetFiles(f, "model-*-of-*.safetensors").Length > 1);
        var back = LlamaForCausalLM.FromPretrained(f, torch.CPU, ScalarType.Float32);
        var a = m.state_dict();
        foreach (var (k, v) in back.state_dict()) Assert.True(TinyModels.Same(a[k], v), k);
    }

    [Fact]
    public void MissingUnexpectedAndMisShapedTensorsAreNamed()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 5);
        string f = Folder("bad");
        m.SavePretrained(f);
        var w = HfFolder.ReadWeights(f);
        w.Remove("model.layers.1.mlp.up_proj.weight");
        w["model.layers.0.input_layernorm.weight"] = torch.ones(31);
        w["model.extra.weight"] = torch.ones(2);
        HfFolder.WriteWeights(f, w);
        var e = Assert.Throws<InvalidDataException>(() => LlamaForCausalLM.FromPretrained(f, torch.CPU, ScalarType.Float32));
        Assert.Contains("Missing: model.layers.1.mlp.up_proj.weight", e.Message);
        Assert.Contains("Unexpected: model.extra.weight", e.Message);
        Assert.Contains("model.layers.0.input_layernorm.weight: expected [32], found [31]", e.Message);
        Assert.Contains("Expected: ", e.Message);
    }

    [Fact]
    public void TruncatedWeightsFileIsReported()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 5);
        string f = Folder("trunc");
        m.SavePretrained(f);
        string path = Path.Combine(f, HfFolder.WeightsFile);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^100]);
        var e = Assert.Throws<InvalidDataException>(() => LlamaForCausalLM.FromPretrained(f, torch.CPU, ScalarType.Float32));
        Assert.Contains("truncated", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void SequenceClassifierFromCausalLmGetsFreshHeadAndRoundTrips()
    {
        var lm = TinyModels.Randomized(TinyModels.Config(), 6);
        lm.SavePretrained(Folder("sft"));
        Assert.Throws<InvalidDataException>(() => LlamaForSequenceClassification.FromPretrained(Folder("sft"), torch.CPU, ScalarType.Float32));
        var rm = LlamaForSequenceClassification.FromPretrained(Folder("sft"), torch.CPU, ScalarType.Float32, newHeadSeed: 1);
        var lmSd = lm.state_dict();
        var rmSd = rm.state_dict();
        Assert.True(TinyModels.Same(lmSd["model.norm.weight"], rmSd["model.norm.weight"]));
        Assert.InRange(rmSd["score.weight"].std().item<float>(), 0.05, 0.4);   // 1/sqrt(33) ≈ 0.17

        rm.SavePretrained(Folder("rm"));
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder("rm"), "config.json")))!;
        Assert.Equal("LlamaForSequenceClassification", cfg["architectures"]![0]!.GetValue<string>());
        var back = LlamaForSequenceClassification.FromPretrained(Folder("rm"), torch.CPU, ScalarType.Float32);
        foreach (var (k, v) in back.state_dict()) Assert.True(TinyModels.Same(rmSd[k], v), k);
    }
}
