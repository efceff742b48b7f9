using Rlhf.Export;
using Rlhf.Training.OnnxExport;
using Xunit.Abstractions;

namespace Rlhf.Training.Tests.Export;

/// <summary>ORT logits of both exported graph kinds vs the TorchSharp LlamaForCausalLM on the same weights (fp32, ≤ 1e-4).</summary>
public sealed class ExportParityTests(ITestOutputHelper output)
{
    const double Tolerance = 1e-4;

    /// <summary>
    /// Prefill of uneven rows (lengths 7, 4, 1) then 3 single-token decode steps through the KV cache. The plain graph
    /// is checked with left and right padding; the GQA graph with right padding (the only padding it supports).
    /// </summary>
    [Theory]
    [InlineData("llama", "plain", false)]
    [InlineData("llama", "plain", true)]
    [InlineData("llama", "gqa", false)]
    [InlineData("qwen2", "plain", true)]
    [InlineData("qwen2", "gqa", false)]
    [InlineData("llama_bias", "plain", false)]
    [InlineData("llama_bias", "gqa", false)]
    [InlineData("tied", "plain", true)]
    [InlineData("tied", "gqa", false)]
    [InlineData("mha", "gqa", false)]
    [InlineData("mistral", "gqa", false)]
    [InlineData("llama3", "plain", true)]
    [InlineData("llama3", "gqa", false)]
    [InlineData("linear", "plain", false)]
    [InlineData("linear", "gqa", false)]
    [InlineData("mistral_window", "plain", true)]
    [InlineData("mistral_window", "plain", false)]
    [InlineData("mistral_window", "gqa", false)]
    [InlineData("qwen2_window", "plain", true)]
    [InlineData("qwen2_window", "gqa", false)]
    [InlineData("head_dim", "plain", true)]
    [InlineData("head_dim", "gqa", false)]
    public void LogitsMatchTorchSharp(string variant, string graph, bool leftPad)
    {
        using var model = ExportModels.Policy(variant);
        string dir = ExportModels.TempPath(variant);
        try
        {
            PolicyExport.Export(model.Config, model.state_dict(), dir, ExportNames.ParseGraph(graph));
            var p = OnnxParity.Policy(model, dir, [7, 4, 1], steps: 3, leftPad, seed: 9);
            output.WriteLine($"{variant} {graph} {(leftPad ? "left" : "right")}: prefill {p.Prefill:E2}, decode {p.Decode:E2}");
            Assert.True(p.Prefill <= Tolerance, $"prefill max |diff| {p.Prefill}");
            Assert.True(p.Decode <= Tolerance, $"decode max |diff| {p.Decode}");
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    /// <summary>The GQA graph on a single row decoded for many steps (positions advance past the prompt correctly).</summary>
    [Fact]
    public void GqaLongDecodeOfOneRowMatches()
    {
        using var model = ExportModels.Policy("llama", seed: 8);
        string dir = ExportModels.TempPath("gqa1");
        try
        {
            PolicyExport.Export(model.Config, model.state_dict(), dir, GraphKind.ContribGqa);
            var p = OnnxParity.Policy(model, dir, [3], steps: 12, leftPad: false, seed: 2);
            output.WriteLine($"gqa batch 1: prefill {p.Prefill:E2}, decode {p.Decode:E2}");
            Assert.True(p.Max <= Tolerance, $"max |diff| {p.Max}");
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    /// <summary>The GQA graph with GenAI's shared past/present layout: past is a max_length buffer from the prefill on.</summary>
    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("mistral_window")]
    [InlineData("llama3")]
    public void GqaWithSharedMaxLengthBufferMatches(string variant)
    {
        using var model = ExportModels.Policy(variant, seed: 12);
        string dir = ExportModels.TempPath("gqa-shared");
        try
        {
            PolicyExport.Export(model.Config, model.state_dict(), dir, GraphKind.ContribGqa);
            var p = OnnxParity.Policy(model, dir, [6, 2, 4], steps: 4, leftPad: false, seed: 3, sharedBuffer: true);
            output.WriteLine($"gqa shared buffer {variant}: prefill {p.Prefill:E2}, decode {p.Decode:E2}");
            Assert.True(p.Max <= Tolerance, $"max |diff| {p.Max}");
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    /// <summary>Reward graph vs LlamaForSequenceClassification.Scores/Values, left and right padding (same position ids).</summary>
    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("tied")]
    [InlineData("qwen2_window")]
    [InlineData("llama3")]
    public void RewardsAndValuesMatchTorchSharp(string variant)
    {
        using var model = ExportModels.Reward(variant);
        string dir = ExportModels.TempPath("rm-" + variant);
        try
        {
            PolicyExport.ExportReward(model.Config, model.state_dict(), dir, ModelKind.Reward);
            double diff = OnnxParity.Reward(model, dir, [6, 3, 1], seed: 4);
            output.WriteLine($"reward {variant}: max |diff| {diff:E2}");
            Assert.True(diff <= Tolerance, $"max |diff| {diff}");
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void GqaRejectsLeftPaddingInTheHarness()
    {
        using var model = ExportModels.Policy("llama");
        string dir = ExportModels.TempPath("gqa-left");
        try
        {
            PolicyExport.Export(model.Config, model.state_dict(), dir, GraphKind.ContribGqa);
            var e = Assert.Throws<ArgumentException>(() => OnnxParity.Policy(model, dir, [3, 2], 1, leftPad: true, seed: 1));
            Assert.Contains("right padding", e.Message);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }
}
