using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Pipeline;

/// <summary>The whole InstructGPT recipe in one config: a section per stage (their <c>out</c> folders are derived).</summary>
public sealed record PipelineConfig
{
    /// <summary>Output folder; stages write to <c>sft/</c>, <c>rm/</c>, <c>ppo/</c> inside it.</summary>
    public string Out { get; init; } = "runs/pipeline";
    /// <summary>An existing SFT model folder to use instead of running the SFT stage.</summary>
    public string? SftFrom { get; init; }
    /// <summary>An existing reward-model folder to use instead of running the RM stage.</summary>
    public string? RmFrom { get; init; }
    /// <summary>Seed for every stage.</summary>
    public long Seed { get; init; } = 1;
    /// <summary>cpu or cuda, for every stage.</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>Intra-op threads for every stage (0 = all cores).</summary>
    public int Threads { get; init; }
    /// <summary>SFT settings (its out, seed, device and threads come from the pipeline).</summary>
    public SftConfig Sft { get; init; } = new();
    /// <summary>RM settings (its out, sft_model, seed, device and threads come from the pipeline).</summary>
    public RmConfig Rm { get; init; } = new();
    /// <summary>PPO settings (its out, sft_model, rm_model, seed, device and threads come from the pipeline).</summary>
    public PpoConfig Ppo { get; init; } = new();
}
