using System.Text.Json.Nodes;
using Rlhf.Export;
using Rlhf.Export.Onnx;
using Rlhf.Export.Onnx.Proto;
using Rlhf.Training.Cli;
using Rlhf.Training.OnnxExport;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Export;

/// <summary>The exported folders: files, genai_config keys, manifest, structural checks, errors, atomicity, CLI.</summary>
public sealed class ExportFolderTests
{
    static string[] Siblings(string dir) =>
        Directory.GetFileSystemEntries(Path.GetDirectoryName(dir)!, "." + Path.GetFileName(dir) + "*");

    [Theory]
    [InlineData(GraphKind.Plain)]
    [InlineData(GraphKind.ContribGqa)]
    public void PolicyFolderHasGenAiLayoutAndManifestWithParity(GraphKind graph)
    {
        using var model = ExportModels.Policy("qwen2");
        string src = ExportModels.TempPath("src"), dir = ExportModels.TempPath("pol");
        try
        {
            model.SavePretrained(src);
            File.WriteAllText(Path.Combine(src, "tokenizer.json"), "{}");
            var result = ExportStage.ExportPolicy(model, dir, graph, new ExportOptions { TokenizerFolder = src, Parent = src, Stage = "sft" });
            foreach (var f in new[] { "model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", ExportManifest.FileName })
                Assert.True(File.Exists(Path.Combine(dir, f)), f);

            var genai = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "genai_config.json")))!.AsObject();
            // ONNX Runtime GenAI itself parses the config (it rejects unknown keys) and builds the model from the folder.
            using (var genaiModel = new Microsoft.ML.OnnxRuntimeGenAI.Model(dir)) Assert.Equal("qwen2", genaiModel.GetModelType());
            Assert.Equal("qwen2", (string?)genai["model"]!["type"]);
            Assert.Equal(graph == GraphKind.ContribGqa, (bool)genai["search"]!["past_present_share_buffer"]!);
            Assert.Equal(graph == GraphKind.Plain, genai["model"]!["decoder"]!["inputs"]!.AsObject().ContainsKey("position_ids"));
            Assert.Equal(16, (int)genai["model"]!["decoder"]!["head_size"]!);

            var m = ExportManifest.Load(dir);
            Assert.Equal("sft", m.Stage);
            Assert.Equal("policy", m.Kind);
            Assert.Equal(ExportNames.Name(graph), m.Graph);
            Assert.Equal(ExportManifest.Sha256(File.ReadAllBytes(Path.Combine(src, "config.json"))), m.ConfigSha256);
            Assert.NotNull(m.Parity);
            Assert.InRange(m.Parity!.MaxAbsDiff, 0, 1e-4);
            Assert.Equal(result.Manifest, m);
            Assert.True(File.Exists(result.Saved.DataPath), result.Saved.DataPath);
            Assert.Equal(new FileInfo(result.Saved.DataPath!).Length + new FileInfo(result.Saved.ModelPath).Length, m.OnnxBytes);
            Assert.Empty(Siblings(dir));
        }
        finally
        {
            foreach (var d in new[] { src, dir }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }

    [Fact]
    public void GqaGraphIsStructurallyValidWithContribOpsAndPackedQkv()
    {
        using var model = ExportModels.Policy("qwen2");
        var proto = LlamaContribGraph.Build(model.Config, model.state_dict()).ToModel();
        Assert.Empty(OnnxChecker.Check(proto));
        Assert.Contains(proto.OpsetImport, o => o.Domain == "com.microsoft" && o.Version == 1);
        var ops = proto.Graph.Node.GroupBy(n => (n.Domain, n.OpType)).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(2, ops[("com.microsoft", "GroupQueryAttention")]);
        Assert.Equal(1, ops[("", "SimplifiedLayerNormalization")]);
        Assert.Equal(4, ops[("com.microsoft", "SkipSimplifiedLayerNormalization")]);
        Assert.DoesNotContain(proto.Graph.Input, i => i.Name == "position_ids");
        var qkv = proto.Graph.Initializer.Single(t => t.Name == LlamaContribGraph.PackedQkvName(0));
        Assert.Equal([64L, (4 + 2 * 2) * 16], qkv.Dims);
        Assert.Equal([128L], proto.Graph.Initializer.Single(t => t.Name == "model.layers.1.self_attn.qkv_proj.bias").Dims);
        Assert.DoesNotContain(proto.Graph.Initializer, t => t.Name.Contains("q_proj", StringComparison.Ordinal));
        Assert.True(LlamaGraph.IsStoredTransposed(LlamaContribGraph.PackedQkvName(0)));
        Assert.Equal([64L, 8], proto.Graph.Initializer.Single(t => t.Name == "cos_cache").Dims);
        var gqa = proto.Graph.Node.First(n => n.OpType == "GroupQueryAttention");
        Assert.Equal("", gqa.Input[1]);
        Assert.Equal(1, gqa.Attribute.Single(a => a.Name == "do_rotary").I);
    }

    [Fact]
    public void GqaRejectsHeadSizeNotMultipleOf16()
    {
        var cfg = ExportModels.Config("llama") with { HiddenSize = 32, NumAttentionHeads = 4, NumKeyValueHeads = 2 };   // D = 8
        using var model = Rlhf.Training.Model.LlamaForCausalLM.Create(cfg, CPU, ScalarType.Float32, 1);
        var e = Assert.Throws<ArgumentException>(() => LlamaContribGraph.Build(cfg, model.state_dict()));
        Assert.Contains("multiple of 16", e.Message);
        Assert.Equal(GraphKind.Plain, ExportStage.DefaultGraph(cfg));
    }

    [Fact]
    public void ExistingFolderNeedsOverwriteAndFailedExportLeavesNothing()
    {
        using var model = ExportModels.Policy("llama");
        string dir = ExportModels.TempPath("ow");
        try
        {
            PolicyExport.Export(model.Config, model.state_dict(), dir, GraphKind.Plain);
            var stamp = DateTime.UnixEpoch.AddDays(1);   // no write gives this time: found later, the file was not rewritten
            File.SetLastWriteTimeUtc(Path.Combine(dir, "model.onnx"), stamp);
            var e = Assert.Throws<InvalidOperationException>(() => PolicyExport.Export(model.Config, model.state_dict(), dir, GraphKind.Plain));
            Assert.Contains("--overwrite", e.Message);

            // A failing export (missing tensor) with overwrite leaves the old folder in place and no temp folders.
            var broken = model.state_dict().Where(kv => kv.Key != "model.norm.weight").ToDictionary(kv => kv.Key, kv => kv.Value);
            var bad = Assert.Throws<ArgumentException>(() => PolicyExport.Export(model.Config, broken, dir, GraphKind.ContribGqa, new ExportOptions { Overwrite = true }));
            Assert.Contains("model.norm.weight", bad.Message);
            Assert.Equal(stamp, File.GetLastWriteTimeUtc(Path.Combine(dir, "model.onnx")));
            Assert.Equal("plain", ExportManifest.Load(dir).Graph);
            Assert.Empty(Siblings(dir));

            // Overwrite replaces it.
            PolicyExport.Export(model.Config, model.state_dict(), dir, GraphKind.ContribGqa, new ExportOptions { Overwrite = true });
            Assert.Equal("gqa", ExportManifest.Load(dir).Graph);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
        string fresh = ExportModels.TempPath("fail");
        var cfg = ExportModels.Config("llama") with { HiddenSize = 48 };                 // weights no longer match
        Assert.Throws<ArgumentException>(() => PolicyExport.Export(cfg, model.state_dict(), fresh, GraphKind.Plain));
        Assert.False(Directory.Exists(fresh));
        Assert.Empty(Siblings(fresh));
    }

    [Fact]
    public void ExportCommandExportsHfFoldersAndReportsErrors()
    {
        using var model = ExportModels.Policy("tied");
        using var rm = ExportModels.Reward("llama");
        string src = ExportModels.TempPath("cli-src"), rmSrc = ExportModels.TempPath("cli-rm"), dir = ExportModels.TempPath("cli-out"), rmDir = ExportModels.TempPath("cli-rmo");
        try
        {
            model.SavePretrained(src);
            rm.SavePretrained(rmSrc);
            Assert.Equal(0, RlhfCommand.Run(["export", "--model", src, "--out", dir]));
            Assert.Equal("gqa", ExportManifest.Load(dir).Graph);
            Assert.Equal(1, RlhfCommand.Run(["export", "--model", src, "--out", dir]));                          // exists
            Assert.Equal(0, RlhfCommand.Run(["export", "--model", src, "--out", dir, "--graph", "plain", "--overwrite"]));
            Assert.Equal("plain", ExportManifest.Load(dir).Graph);
            Assert.Equal(0, RlhfCommand.Run(["export", "--model", rmSrc, "--out", rmDir, "--kind", "reward"]));
            var m = ExportManifest.Load(rmDir);
            Assert.Equal("reward", m.Kind);
            Assert.InRange(m.Parity!.MaxAbsDiff, 0, 1e-4);
            Assert.False(File.Exists(Path.Combine(rmDir, "genai_config.json")));
            Assert.Equal(1, RlhfCommand.Run(["export", "--model", src, "--out", rmDir + "x", "--kind", "reward"]));   // no score.weight
            Assert.Equal(1, RlhfCommand.Run(["export", "--model", src + "-missing", "--out", rmDir + "y"]));
            Assert.False(Directory.Exists(rmDir + "x"));
        }
        finally
        {
            foreach (var d in new[] { src, rmSrc, dir, rmDir }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }

    [Fact]
    public void BenchProducesRowsForBothGraphsAndTorch()
    {
        var cfg = ExportModels.Config("llama");
        var rows = ExportBench.Run([("t", cfg)], new BenchOptions { Tokens = 4, Batches = [1, 2], Repeats = 1, Threads = 1 });
        foreach (var engine in new[] { "ort-plain", "ort-gqa", "torch" })
            foreach (var measure in new[] { "prefill", "decode" })
                Assert.Equal(2, rows.Count(r => r.Engine == engine && r.Measure == measure && r.Value > 0));
        Assert.Equal(2, rows.Count(r => r.Measure == "export"));
        Assert.Contains("ort-gqa", ExportBench.Format(rows));
    }
}
