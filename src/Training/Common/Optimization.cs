using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Common;

/// <summary>AdamW settings shared by the stages (config keys <c>weight_decay</c>, <c>beta1</c>, <c>beta2</c>, <c>adam_eps</c> in each).</summary>
public sealed record AdamWSettings(double Lr, double WeightDecay, double Beta1, double Beta2, double Eps)
{
    /// <summary>What is wrong with the optimizer keys of a stage config (empty when nothing).</summary>
    public static IEnumerable<string> Problems(double weightDecay, double beta1, double beta2, double eps)
    {
        if (!(weightDecay >= 0)) yield return "weight_decay must be ≥ 0";
        if (beta1 is not (>= 0 and < 1) || beta2 is not (>= 0 and < 1)) yield return "beta1 and beta2 must be in [0, 1)";
        if (!(eps > 0)) yield return "adam_eps must be > 0";
    }
}

/// <summary>What every trainer does to its parameters: the AdamW optimizer, which parameters train, gradients, learning rate and gradient clipping.</summary>
public static class Optimization
{
    /// <summary>AdamW with decoupled weight decay on matrices only (norm weights and biases are not decayed).</summary>
    public static TorchSharp.Modules.AdamW AdamW(nn.Module model, AdamWSettings s)
    {
        var named = Trainable(model);
        var decay = named.Where(p => p.parameter.dim() >= 2).Select(p => p.parameter).ToList();
        var noDecay = named.Where(p => p.parameter.dim() < 2).Select(p => p.parameter).ToList();
        var groups = new List<TorchSharp.Modules.AdamW.ParamGroup>
        {
            new(decay, new TorchSharp.Modules.AdamW.Options { LearningRate = s.Lr, weight_decay = s.WeightDecay, beta1 = s.Beta1, beta2 = s.Beta2, eps = s.Eps }),
            new(noDecay, new TorchSharp.Modules.AdamW.Options { LearningRate = s.Lr, weight_decay = 0.0, beta1 = s.Beta1, beta2 = s.Beta2, eps = s.Eps }),
        };
        return optim.AdamW(groups, s.Lr, s.Beta1, s.Beta2, s.Eps, s.WeightDecay);
    }

    /// <summary>
    /// The parameters a trainer updates: the module's that require gradients, then (a LoRA model) its adapters' A and B.
    /// Under LoRA the base is frozen, so this is the adapters (and a sequence classifier's head) only.
    /// </summary>
    public static List<(string name, TorchSharp.Modules.Parameter parameter)> Trainable(nn.Module model)
    {
        var named = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (model is Model.ILoraModel { Lora: { } lora }) named.AddRange(lora.NamedParameters());
        return named;
    }

    /// <summary>How many parameters a trainer updates (<see cref="Trainable"/>'s, element count).</summary>
    public static long TrainableCount(nn.Module model) => Trainable(model).Sum(p => p.parameter.numel());

    /// <summary>
    /// Drops the gradients of the optimizer's parameters before the next backward (PyTorch's
    /// <c>zero_grad(set_to_none=True)</c>; TorchSharp's <c>zero_grad</c> fills zeros): the backward then stores each
    /// gradient instead of adding it to a zero-filled one, a fill and an add over every parameter less per step. The
    /// numbers are the same (0 + g = g); a parameter that receives no gradient keeps none, and AdamW skips it.
    /// </summary>
    public static void ClearGrads(optim.Optimizer optimizer)
    {
        foreach (var p in optimizer.parameters()) p.grad = null;
    }

    /// <summary>Sets the learning rate of every parameter group.</summary>
    public static void SetLr(optim.Optimizer optimizer, double lr)
    {
        foreach (var g in optimizer.ParamGroups) g.LearningRate = lr;
    }

    /// <summary>Clips the global L2 gradient norm to <paramref name="maxNorm"/> (0 = measure only) and returns the norm before clipping.</summary>
    public static double ClipGradNorm(nn.Module model, double maxNorm)
    {
        var ps = Trainable(model).Select(p => p.parameter).ToList();
        if (maxNorm > 0) return nn.utils.clip_grad_norm_(ps, maxNorm);
        double sq = 0;
        foreach (var p in ps)
            if (p.grad is Tensor g) { using var n = g.norm(); sq += Math.Pow(n.item<float>(), 2); }
        return Math.Sqrt(sq);
    }
}
