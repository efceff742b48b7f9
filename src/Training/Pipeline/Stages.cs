using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Training.Common;
using Rlhf.Training.Dpo;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Pipeline;

/// <summary>
/// One stage as an object the CLI and the training server drive alike: sft, rm, ppo, or the pipeline (their chain).
/// <see cref="Run"/> starts it (or resumes it, <see cref="RunControl.Resume"/>), reports every step through
/// <see cref="RunControl.OnStep"/>, stops at a step boundary when <see cref="RunControl.Cancel"/> fires (checkpoint
/// intact, <see cref="StageCancelledException"/>), and returns the stage's summary.json content.
/// </summary>
public interface IStage
{
    /// <summary>"sft", "rm", "ppo", "dpo" or "pipeline".</summary>
    string Name { get; }
    /// <summary>The output folder.</summary>
    string Out { get; }
    /// <summary>The same stage writing into <paramref name="folder"/>.</summary>
    IStage WithOut(string folder);
    /// <summary>Runs the stage to its end and returns its summary.</summary>
    JsonNode Run(RunControl control);
}

/// <summary>The four stages by name, built from a config JSON object as the CLI's config loader builds them.</summary>
public static class Stages
{
    /// <summary>Stage names, in pipeline order.</summary>
    public static readonly IReadOnlyList<string> Names = ["sft", "rm", "ppo", "dpo", "pipeline"];

    /// <summary>
    /// The stage <paramref name="name"/> with <paramref name="config"/> over its defaults, validated. Unknown keys and
    /// invalid values throw (<see cref="InvalidDataException"/>, <see cref="ArgumentException"/>) with the CLI's messages.
    /// </summary>
    public static IStage FromJson(string name, JsonObject config) => name switch
    {
        "sft" => Of(Validated(ConfigLoader.FromJson<SftConfig>(config, "config"), c => c.Validate())),
        "rm" => Of(Validated(ConfigLoader.FromJson<RmConfig>(config, "config"), c => c.Validate())),
        "ppo" => Of(Validated(ConfigLoader.FromJson<PpoConfig>(config, "config"), c => c.Validate())),
        "dpo" => Of(Validated(ConfigLoader.FromJson<DpoConfig>(config, "config"), c => c.Validate())),
        "pipeline" => Of(Validated(ConfigLoader.FromJson<PipelineConfig>(config, "config"), c =>
        {
            c.Validate();
            c.Sft.Validate();
            c.Rm.Validate();
            c.PpoForAlgorithm().Validate();
            c.Dpo.Validate();
        })),
        _ => throw new ArgumentException($"Unknown stage '{name}'; use one of {string.Join(", ", Names)}."),
    };

    /// <summary>The SFT stage.</summary>
    public static IStage Of(SftConfig config) =>
        new ConfigStage<SftConfig>("sft", config, c => c.Out, (c, o) => c with { Out = o }, (c, r) => Node(SftTrainer.Run(c, r)));
    /// <summary>The reward-model stage.</summary>
    public static IStage Of(RmConfig config) =>
        new ConfigStage<RmConfig>("rm", config, c => c.Out, (c, o) => c with { Out = o }, (c, r) => Node(RmTrainer.Run(c, r)));
    /// <summary>The PPO stage.</summary>
    public static IStage Of(PpoConfig config) =>
        new ConfigStage<PpoConfig>("ppo", config, c => c.Out, (c, o) => c with { Out = o }, (c, r) => Node(PpoTrainer.Train(c, r)));
    /// <summary>The DPO stage.</summary>
    public static IStage Of(DpoConfig config) =>
        new ConfigStage<DpoConfig>("dpo", config, c => c.Out, (c, o) => c with { Out = o }, (c, r) => Node(DpoTrainer.Run(c, r)));
    /// <summary>The pipeline (SFT → RM → PPO).</summary>
    public static IStage Of(PipelineConfig config) =>
        new ConfigStage<PipelineConfig>("pipeline", config, c => c.Out, (c, o) => c with { Out = o }, (c, r) => PipelineRunner.Run(c, r));

    static T Validated<T>(T config, Action<T> validate)
    {
        validate(config);
        return config;
    }

    /// <summary>
    /// <paramref name="control"/> set to continue <paramref name="folder"/>'s checkpoint when it has one, and to start
    /// afresh (replacing whatever is there) when not.
    /// </summary>
    public static RunControl ResumeOrStart(string folder, RunControl control)
    {
        bool resume = Directory.Exists(Path.Combine(folder, "checkpoint"));
        return control with { Resume = resume, Overwrite = !resume };
    }

    static JsonNode Node<T>(T summary) => JsonSerializer.SerializeToNode(summary, ConfigLoader.Json)!;

    /// <summary>A stage as its config, how to read and set its output folder, and its trainer.</summary>
    sealed record ConfigStage<T>(string Name, T Config, Func<T, string> OutOf, Func<T, string, T> SetOut, Func<T, RunControl, JsonNode> Train) : IStage
    {
        public string Out => OutOf(Config);
        public IStage WithOut(string folder) => this with { Config = SetOut(Config, folder) };
        public JsonNode Run(RunControl control) => Train(Config, control);
    }
}
