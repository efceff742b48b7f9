using System.Text.Json;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Common;

/// <summary>Trainer state saved in a checkpoint: every stage records the config it ran with.</summary>
public interface ICheckpointState
{
    /// <summary>The stage config as JSON, compared on resume.</summary>
    string ConfigJson { get; }
}

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

/// <summary>Pieces every trainer uses: the optimizer, gradient norms, checkpoints and the progress bar.</summary>
public static class TrainerParts
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

    /// <summary>
    /// Writes a resumable checkpoint folder atomically: <paramref name="saveModel"/> fills the folder with the model
    /// (and tokenizer) files, then one <c>{name}.bin</c> per optimizer, metrics.csv and trainer_state.json are added.
    /// </summary>
    public static string SaveCheckpoint<TState>(string folder, Action<string> saveModel, IReadOnlyDictionary<string, optim.Optimizer> optimizers,
                                                MetricsTable metrics, TState state)
    {
        Rlhf.Export.ModelFolderWriter.Write(folder, overwrite: true, tmp =>
        {
            saveModel(tmp);
            foreach (var (name, optimizer) in optimizers)
                ((TorchSharp.Modules.OptimizerHelper)optimizer).save_state_dict(Path.Combine(tmp, name + ".bin"));
            metrics.WriteCsv(Path.Combine(tmp, "metrics.csv"));
            File.WriteAllText(Path.Combine(tmp, "trainer_state.json"), JsonSerializer.Serialize(state, ConfigLoader.Json));
        });
        return folder;
    }

    /// <summary>
    /// Restores the optimizers, metrics and state of a checkpoint written by <see cref="SaveCheckpoint"/>, refusing one
    /// whose config differs from <paramref name="configJson"/> (a resumed run must repeat the same settings).
    /// </summary>
    public static (TState State, MetricsTable Metrics) LoadCheckpoint<TState>(string folder, IReadOnlyDictionary<string, optim.Optimizer> optimizers,
                                                                             string configJson) where TState : ICheckpointState
    {
        foreach (var (name, optimizer) in optimizers)
            ((TorchSharp.Modules.OptimizerHelper)optimizer).load_state_dict(Path.Combine(folder, name + ".bin"));
        var state = JsonSerializer.Deserialize<TState>(File.ReadAllText(Path.Combine(folder, "trainer_state.json")), ConfigLoader.Json)
            ?? throw new InvalidDataException($"{folder}/trainer_state.json is empty.");
        if (state.ConfigJson != configJson)
            throw new InvalidOperationException($"--resume: the config differs from the checkpoint's ({folder}/trainer_state.json); resume with the same settings.");
        return (state, MetricsTable.ReadCsv(Path.Combine(folder, "metrics.csv")));
    }

    /// <summary>
    /// Runs <paramref name="body"/> (which reports progress through its callback) under a Spectre.Console progress bar
    /// when the console is interactive, or plainly otherwise.
    /// </summary>
    public static void WithProgress(string label, int total, int start, bool show, Action<Action<int>?> body)
    {
        if (!show || Console.IsOutputRedirected || Console.IsErrorRedirected)
        {
            body(null);
            return;
        }
        AnsiConsole.Progress().AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(label, maxValue: total);
                task.Value = start;
                body(s => task.Value = s);
            });
    }

    /// <summary>(label, x, y = column) for <see cref="Plots.Lines"/>; x is the <paramref name="xColumn"/> column.</summary>
    public static (string, double[], double[]) Series(string label, MetricsTable m, string column, string xColumn = "step")
    {
        var (x, y) = m.Series(xColumn, column);
        return (label, x, y);
    }

    /// <summary>Mean and sample standard deviation.</summary>
    public static (double Mean, double Std) MeanStd(IReadOnlyCollection<double> xs)
    {
        if (xs.Count == 0) return (double.NaN, double.NaN);
        double mean = xs.Average();
        double std = Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / Math.Max(1, xs.Count - 1));
        return (mean, std);
    }
}
