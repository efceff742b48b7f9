using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Training.Common;
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
    /// <summary>"sft", "rm", "ppo" or "pipeline".</summary>
    string Name { get; }
    /// <summary>The output folder.</summary>
    string Out { get; }
    /// <summary>The same stage writing into <paramref name="folder"/>.</summary>
    IStage WithOut(string folder);
    /// <summary>The config as the JSON the stage writes next to its outputs.</summary>
    string ConfigJson { get; }
    /// <summary>Runs the stage to its end and returns its summary.</summary>
    JsonNode Run(RunControl control);
}

/// <summary>The four stages by name, built from a config JSON object as the CLI's config loader builds them.</summary>
public static class Stages
{
    /// <summary>Stage names, in pipeline order.</summary>
    public static readonly IReadOnlyList<string> Names = ["sft", "rm", "ppo", "pipeline"];

    /// <summary>
    /// The stage <paramref name="name"/> with <paramref name="config"/> over its defaults, validated. Unknown keys and
    /// invalid values throw (<see cref="InvalidDataException"/>, <see cref="ArgumentException"/>) with the CLI's messages.
    /// </summary>
    public static IStage FromJson(string name, JsonObject config) => name switch
    {
        "sft" => new SftStage(Validated(ConfigLoader.FromJson<SftConfig>(config, "config"), c => c.Validate())),
        "rm" => new RmStage(Validated(ConfigLoader.FromJson<RmConfig>(config, "config"), c => c.Validate())),
        "ppo" => new PpoStage(Validated(ConfigLoader.FromJson<PpoConfig>(config, "config"), c => c.Validate())),
        "pipeline" => new PipelineStage(Validated(ConfigLoader.FromJson<PipelineConfig>(config, "config"), c =>
        {
            c.Validate();
            c.Sft.Validate();
            c.Rm.Validate();
            c.Ppo.Validate();
        })),
        _ => throw new ArgumentException($"Unknown stage '{name}'; use one of {string.Join(", ", Names)}."),
    };

    /// <summary>The SFT stage.</summary>
    public static IStage Of(SftConfig config) => new SftStage(config);
    /// <summary>The reward-model stage.</summary>
    public static IStage Of(RmConfig config) => new RmStage(config);
    /// <summary>The PPO stage.</summary>
    public static IStage Of(PpoConfig config) => new PpoStage(config);
    /// <summary>The pipeline (SFT → RM → PPO).</summary>
    public static IStage Of(PipelineConfig config) => new PipelineStage(config);

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

    sealed record SftStage(SftConfig Config) : IStage
    {
        public string Name => "sft";
        public string Out => Config.Out;
        public string ConfigJson => ConfigLoader.ToJson(Config);
        public IStage WithOut(string folder) => this with { Config = Config with { Out = folder } };
        public JsonNode Run(RunControl control) => Node(SftTrainer.Run(Config, control));
    }

    sealed record RmStage(RmConfig Config) : IStage
    {
        public string Name => "rm";
        public string Out => Config.Out;
        public string ConfigJson => ConfigLoader.ToJson(Config);
        public IStage WithOut(string folder) => this with { Config = Config with { Out = folder } };
        public JsonNode Run(RunControl control) => Node(RmTrainer.Run(Config, control));
    }

    sealed record PpoStage(PpoConfig Config) : IStage
    {
        public string Name => "ppo";
        public string Out => Config.Out;
        public string ConfigJson => ConfigLoader.ToJson(Config);
        public IStage WithOut(string folder) => this with { Config = Config with { Out = folder } };
        public JsonNode Run(RunControl control) => Node(PpoTrainer.Train(Config, control));
    }

    sealed record PipelineStage(PipelineConfig Config) : IStage
    {
        public string Name => "pipeline";
        public string Out => Config.Out;
        public string ConfigJson => ConfigLoader.ToJson(Config);
        public IStage WithOut(string folder) => this with { Config = Config with { Out = folder } };
        public JsonNode Run(RunControl control) => PipelineRunner.Run(Config, control);
    }
}
