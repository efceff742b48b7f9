using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.Engines;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// The models and services of a PPO run: the trained actor and critic, the frozen reference π_ref, the rollout engine
/// that samples from the actor's pushed weights and the reward service that scores the samples.
/// </summary>
public sealed class PpoModels : IDisposable
{
    /// <summary>Where the TorchSharp models live.</summary>
    public required Device Device { get; init; }
    /// <summary>The SFT model's tokenizer (prompts in, response texts out).</summary>
    public required TextTokenizer Tokenizer { get; init; }
    /// <summary>π_θ, trained.</summary>
    public required LlamaForCausalLM Actor { get; init; }
    /// <summary>π_ref, the SFT model, frozen.</summary>
    public required LlamaForCausalLM Reference { get; init; }
    /// <summary>V_φ, trained; null with a critic-free advantage estimator.</summary>
    public required LlamaForSequenceClassification? Critic { get; init; }
    /// <summary>The rollout engine (ONNX Runtime, GenAI, TorchSharp or remote replicas).</summary>
    public required IRolloutService Rollouts { get; init; }
    /// <summary>The reward service (an ONNX reward model in process, or a remote one).</summary>
    public required IRewardService Rewards { get; init; }
    /// <summary>The id that pads token rows (<see cref="Open"/>: the tokenizer's pad, else its EOS, else 0).</summary>
    public required int PadId { get; init; }

    /// <summary>
    /// Opens the run's models and services: the actor from <see cref="PpoConfig.PolicyModel"/> (or the SFT model, or
    /// the checkpoint <paramref name="resumeFrom"/>), the critic (when the advantage estimator needs one) from the checkpoint,
    /// our RM (its normalisation folded in later) or the SFT model with a fresh value head; dropout off for the whole stage (the ratio must compare the
    /// same function at rollout and update time).
    /// </summary>
    public static PpoModels Open(PpoConfig cfg, Device device, string? resumeFrom)
    {
        string? rmFolder = cfg.RmFolder();
        var tokenizer = TextTokenizer.Load(cfg.SftModel);
        var actor = LlamaForCausalLM.FromPretrained(resumeFrom is null ? cfg.PolicyModel ?? cfg.SftModel : Path.Combine(resumeFrom, "actor"), device, ScalarType.Float32);
        var lora = cfg.Lora();
        if (lora.Enabled) actor.AttachLora(lora, cfg.Seed, cfg.PolicyModel ?? cfg.SftModel, from: resumeFrom is null ? null : Path.Combine(resumeFrom, "actor"));
        actor.GradientCheckpointing = cfg.GradientCheckpointing;
        // π_ref is the SFT model. Under LoRA with the actor started from it, that is the actor's frozen base: a second module
        // over the same storage, adapters off — no second copy of the weights.
        var reference = lora.Enabled && cfg.PolicyModel is null
            ? LlamaForCausalLM.SharingBase(actor)
            : LlamaForCausalLM.FromPretrained(cfg.SftModel, device, ScalarType.Float32);
        foreach (var p in reference.parameters()) p.requires_grad = false;
        var critic = !cfg.AdvantageEstimator.NeedsCritic() ? null
            : resumeFrom is not null
            ? LlamaForSequenceClassification.FromPretrained(Path.Combine(resumeFrom, "critic"), device, ScalarType.Float32)   // with its score.bias if it has one
            : rmFolder is not null
                ? LlamaForSequenceClassification.FromPretrained(rmFolder, device, ScalarType.Float32, scoreBias: cfg.FoldRmNormalization)
                : LlamaForSequenceClassification.FromPretrained(cfg.SftModel, device, ScalarType.Float32, newHeadSeed: cfg.Seed);
        if (critic is not null)
        {
            critic.GradientCheckpointing = cfg.GradientCheckpointing;
            if (lora.Enabled && cfg.CriticLora)   // adapters on the critic's trunk, its value head trained fully
                critic.AttachLora(lora, cfg.Seed + 1, rmFolder ?? cfg.SftModel, from: resumeFrom is null ? null : Path.Combine(resumeFrom, "critic"));
        }
        if (critic is not null && resumeFrom is null && rmFolder is null)
            StageLog.Info($"Critic: no rm_model, so it starts from the SFT model {cfg.SftModel} with a fresh value head (N(0, 1/sqrt(H+1)), no bias).");
        var timeout = TimeSpan.FromSeconds(cfg.ServiceTimeoutSeconds);
        var rewards = cfg.RewardUrl is { } url ? InferenceServices.OpenRlhfRewards(url, cfg.ServiceTokenFile, timeout)
            : cfg.RewardEndpoint is { } endpoint ? InferenceServices.RemoteRewards(endpoint, cfg.ServiceTokenFile, timeout)
            : InferenceServices.Rewards(cfg.RewardModel, rmFolder, cfg.Threads, cfg.RewardTemplate);
        var rollouts = cfg.RolloutEndpoints.Count > 0
            ? InferenceServices.Replicas(cfg.RolloutEndpoints, cfg.ServiceTokenFile, cfg.RolloutShardSize, timeout)
            : InferenceServices.Sharded(PolicyRollouts.ForActor(cfg.Engine, actor, tokenizer, cfg.SftModel, Path.Combine(cfg.Out, ".rollout_engine"), cfg.Threads, cfg.RolloutPrecision), cfg.RolloutShardSize);
        actor.Precision = reference.Precision = cfg.Precision.Resolve(device);
        actor.eval();
        reference.eval();
        if (critic is not null)
        {
            critic.Precision = actor.Precision;
            critic.eval();
        }
        return new PpoModels
        {
            Device = device, Tokenizer = tokenizer, PadId = tokenizer.PaddingId, Actor = actor, Reference = reference, Critic = critic,
            Rollouts = rollouts, Rewards = rewards,
        };
    }

    /// <summary>The SFT folder and our RM folder (when one is in force) exist, or an error says what to pass instead.</summary>
    public static void CheckFolders(PpoConfig cfg)
    {
        if (!File.Exists(Path.Combine(cfg.SftModel, "config.json")))
            throw new DirectoryNotFoundException($"{cfg.SftModel}: no SFT model folder (config.json); train one with `rlhf sft` or pass --sft-model.");
        if (cfg.PolicyModel is string policy && !File.Exists(Path.Combine(policy, "config.json")))
            throw new DirectoryNotFoundException($"{policy}: no policy model folder (config.json) to start the actor from (policy_model).");
        if (cfg.RmFolder() is string rm && !File.Exists(Path.Combine(rm, "config.json")))
            throw new DirectoryNotFoundException($"{rm}: no reward-model folder (config.json); train one with `rlhf rm`, set rm_model (--rm-model), " +
                                                 "or optimise an ONNX reward model alone with --reward-model <folder>.");
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Rollouts.Dispose();
        Rewards.Dispose();
        Actor.Dispose();
        Reference.Dispose();
        Critic?.Dispose();
    }
}
