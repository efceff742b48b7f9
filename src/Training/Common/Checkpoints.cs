using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Common;

/// <summary>Trainer state saved in a checkpoint: every stage records the config it ran with.</summary>
public interface ICheckpointState
{
    /// <summary>The stage config as JSON, compared on resume.</summary>
    string ConfigJson { get; }
}

/// <summary>Resumable checkpoint folders: the model files, one state file per optimizer, metrics.csv and trainer_state.json.</summary>
public static class Checkpoints
{
    /// <summary>
    /// Writes a resumable checkpoint folder atomically: <paramref name="saveModel"/> fills the folder with the model
    /// (and tokenizer) files, then one <c>{name}.bin</c> per optimizer, metrics.csv and trainer_state.json are added.
    /// </summary>
    public static string Save<TState>(string folder, Action<string> saveModel, IReadOnlyDictionary<string, optim.Optimizer> optimizers,
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
    /// Restores the optimizers, metrics and state of a checkpoint written by <see cref="Save"/>, refusing one
    /// whose config differs from <paramref name="configJson"/> (a resumed run must repeat the same settings).
    /// </summary>
    public static (TState State, MetricsTable Metrics) Load<TState>(string folder, IReadOnlyDictionary<string, optim.Optimizer> optimizers,
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
}
