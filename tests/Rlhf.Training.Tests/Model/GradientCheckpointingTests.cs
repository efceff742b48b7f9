using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

/// <summary>Activation checkpointing: the recomputed backward gives the plain gradients (dropout included).</summary>
public sealed class GradientCheckpointingTests
{
    static Dictionary<string, Tensor> Gradients(bool checkpointing, bool lora)
    {
        var cfg = TinyModels.Config() with { ResidualDropout = 0.1, AttentionDropout = 0.1 };
        var m = LlamaForCausalLM.Create(cfg, CPU, ScalarType.Float32, 3);
        if (lora)
        {
            var adapters = m.AttachLora(new LoraSettings(4, 8, 0.1, LoraSettings.AllLinear), 1, null);
            LoraTests.RandomizeB(adapters, 2);
        }
        m.GradientCheckpointing = checkpointing;
        m.train();
        torch.manual_seed(11);   // the same dropout masks in both runs
        using var ids = TinyModels.Ids([1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 0]);
        using var mask = tensor(new long[] { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0 }, [2, 6]);
        using var pos = PositionIds.FromAttentionMask(mask);
        using (var scope = NewDisposeScope())
        {
            var logits = m.Forward(ids, mask, pos);                          // [2, 6, V]
            var loss = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).mean().neg();
            loss.backward();
        }
        var named = Rlhf.Training.Common.Optimization.Trainable(m);
        var grads = named.ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        m.Dispose();
        return grads;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CheckpointedGradientsEqualThePlainOnes(bool lora)
    {
        var plain = Gradients(false, lora);
        var recomputed = Gradients(true, lora);
        Assert.Equal(plain.Keys.Order(), recomputed.Keys.Order());
        foreach (var (name, g) in plain)
        {
            float scale = Math.Max(1e-6f, g.abs().max().item<float>());
            Assert.True(TinyModels.MaxAbsDiff(g, recomputed[name]) <= 1e-5f * Math.Max(1, scale), $"{name}: gradients differ");
        }
        Assert.Contains(plain.Values, g => g.abs().max().item<float>() > 0);
    }
}
