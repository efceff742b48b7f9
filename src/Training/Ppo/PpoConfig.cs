using Rlhf.Training.Data;
using Rlhf.Inference.Reward;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Inference.Rollout;

namespace Rlhf.Training.Ppo;

/// <summary>PPO stage settings. JSON keys are the snake_case property names (docs/configuration.md).</summary>
public sealed record PpoConfig : FineTuningKeys
{
    /// <summary>Output folder: the aligned policy (HF folder + onnx/), critic/, metrics, plots, report, summary.json.</summary>
    public string Out { get; init; } = "runs/ppo";
    /// <summary>SFT folder: the actor's start and the frozen reference π_ref.</summary>
    public string SftModel { get; init; } = "runs/sft";
    /// <summary>The actor's starting weights (an HF causal-LM folder, e.g. an earlier PPO run); null = <see cref="SftModel"/>. π_ref stays the SFT model (an <c>sft</c> reward normalisation is measured on the actor's samples at the start).</summary>
    public string? PolicyModel { get; init; }
    /// <summary>
    /// Our reward-model folder (HF + onnx/): the critic's start (its normalisation folded into the value head), and the
    /// scorer unless <see cref="RewardModel"/> is set. null = runs/rm, or none when <see cref="RewardModel"/> is set
    /// (the critic then starts from the SFT model with a fresh head).
    /// </summary>
    public string? RmModel { get; init; }
    /// <summary>A reward model to optimise instead: an ONNX folder or file (ours or external, with its tokenizer and optional reward_spec.json).</summary>
    public string? RewardModel { get; init; }
    /// <summary>How the reward model reads (prompt, response): auto, joined, pair or text; null = its reward_spec.json's.</summary>
    public RewardTemplate? RewardTemplate { get; init; }
    /// <summary>Prompts (CSV/JSONL with a prompt column); null = the default task's PPO prompts.</summary>
    public string? PromptsFile { get; init; }
    /// <summary>Held-out prompts for evaluation and the report; null = the default task's held-out PPO prompts.</summary>
    public string? EvalPromptsFile { get; init; }
    /// <summary>The data files' column names for our fields (prompt) where they differ, e.g. {"prompt": "question"} (OpenRLHF's input_key/output_key/chosen_key/rejected_key).</summary>
    public DatasetColumns DatasetColumns { get; init; } = new();
    /// <summary>Default task: training prompts generated.</summary>
    public int DefaultPrompts { get; init; } = 4000;
    /// <summary>Held-out prompts scored at each evaluation and in the report.</summary>
    public int EvalPrompts { get; init; } = 128;
    /// <summary>PPO iterations (rollout → score → update → sync).</summary>
    public int Iterations { get; init; } = 60;
    /// <summary>Prompts (= responses) per rollout batch.</summary>
    public int RolloutBatch { get; init; } = 64;
    /// <summary>
    /// Passes over each rollout batch. 4: on the default task 2 passes (half the training per iteration) gained less and
    /// took more iterations to plateau, so PPO took as long or longer (same SFT models and RMs, early stopping: seed 1
    /// +1.30 SFT std in 35 iterations, 137 s, vs +1.20 in 45, 142 s; seed 2 +1.33 in 35, 126 s, vs +1.28 in 50, 144 s).
    /// </summary>
    public int PpoEpochs { get; init; } = 4;
    /// <summary>Rows per minibatch.</summary>
    public int MiniBatch { get; init; } = 16;
    /// <summary>Minibatches accumulated per optimizer step.</summary>
    public int GradAccum { get; init; } = 1;
    /// <summary>AdamW decoupled weight decay (actor and critic; matrices only).</summary>
    public double WeightDecay { get; init; }
    /// <summary>AdamW β1 (actor and critic).</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW β2 (actor and critic).</summary>
    public double Beta2 { get; init; } = 0.95;
    /// <summary>AdamW ε (actor and critic).</summary>
    public double AdamEps { get; init; } = 1e-8;
    /// <summary>Actor learning rate (constant).</summary>
    public double ActorLr { get; init; } = 1e-4;
    /// <summary>Critic learning rate (constant).</summary>
    public double CriticLr { get; init; } = 3e-4;
    /// <summary>
    /// With <c>lora_rank</c> &gt; 0: true = the critic's trunk carries adapters too (OpenRLHF's <c>--lora_rank</c>);
    /// false = the critic trains fully, as TRL's value model (which takes no <c>peft_config</c>), at 16 bytes per parameter.
    /// </summary>
    public bool CriticLora { get; init; } = true;
    /// <summary>Gradient norm clip per model (0 = off).</summary>
    public double GradClip { get; init; } = 1.0;
    /// <summary>PPO ratio clip ε.</summary>
    public double ClipEps { get; init; } = 0.2;
    /// <summary>Value clip ε_v.</summary>
    public double ValueClipEps { get; init; } = 0.2;
    /// <summary>Value-loss coefficient c_v.</summary>
    public double VfCoef { get; init; } = 0.5;
    /// <summary>Entropy bonus coefficient (0 = off).</summary>
    public double EntropyCoef { get; init; }
    /// <summary>PPO-ptx coefficient γ_ptx on pretraining text, L = L_PPO + γ_ptx·(−mean log π(x)) (0 = off). Measured on the default task: 0.05 keeps corpus perplexity below SFT's at no gold cost, 0.2 costs gold (docs/ppo.md).</summary>
    public double PtxCoef { get; init; }
    /// <summary>PPO-ptx text: plain text (.txt, a document per line) or CSV/JSONL/Parquet with a text column; null = the default task's corpus.</summary>
    public string? PtxFile { get; init; }
    /// <summary>Rows of pretraining text per minibatch (one ptx batch per PPO minibatch).</summary>
    public int PtxBatchSize { get; init; } = 8;
    /// <summary>Tokens per ptx row (packed documents; every token after a row's first is predicted).</summary>
    public int PtxSeqLen { get; init; } = 64;
    /// <summary>
    /// gae (PPO with a critic, the default), rloo, grpo, dr_grpo or reinforce_pp (<see cref="Ppo.AdvantageEstimator"/>); the
    /// critic-free ones build, train, checkpoint and export no critic. rloo, grpo and dr_grpo compare the
    /// <see cref="NSamplesPerPrompt"/> samples of each prompt; grpo and dr_grpo put the KL (k3, coefficient β) in the loss instead of the rewards.
    /// </summary>
    public AdvantageEstimator AdvantageEstimator { get; init; } = AdvantageEstimator.Gae;
    /// <summary>Samples per prompt (k): each iteration takes rollout_batch / k prompts and samples each k times (rloo, grpo and dr_grpo need k ≥ 2).</summary>
    public int NSamplesPerPrompt { get; init; } = 1;
    /// <summary>GAE discount γ.</summary>
    public double Gamma { get; init; } = 1.0;
    /// <summary>GAE λ (0 = one-step TD, 1 = Monte Carlo).</summary>
    public double Lambda { get; init; } = 0.95;
    /// <summary>Per-token KL estimator (k1, k3).</summary>
    public KlEstimator KlEstimator { get; init; } = KlEstimator.K1;
    /// <summary>Initial KL coefficient β.</summary>
    public double InitKlCoef { get; init; } = 0.15;
    /// <summary>Adapt β toward <see cref="TargetKl"/> (Ziegler et al.); false = fixed β.</summary>
    public bool AdaptiveKl { get; init; } = true;
    /// <summary>Target KL per response (nats) for the adaptive controller.</summary>
    public double TargetKl { get; init; } = 3.0;
    /// <summary>Horizon (responses) of the adaptive controller.</summary>
    public double KlHorizon { get; init; } = 1000;
    /// <summary>Stop an iteration's epochs early when the minibatch approx KL exceeds this (0 = never).</summary>
    public double EarlyStopKl { get; init; }
    /// <summary>Whiten advantages over valid tokens (gae and rloo; reinforce_pp always normalises over the batch, grpo and dr_grpo never).</summary>
    public bool WhitenAdvantages { get; init; } = true;
    /// <summary>Penalty for responses that end without EOS (null = keep the RM score); see <see cref="MissingEosPenaltyMode"/>.</summary>
    public double? MissingEosPenalty { get; init; } = -2.0;
    /// <summary>replace: such a response scores <see cref="MissingEosPenalty"/>; subtract: its RM score minus |penalty| (TRL's convention).</summary>
    public EosPenaltyMode MissingEosPenaltyMode { get; init; } = EosPenaltyMode.Replace;
    /// <summary>
    /// Reward-model scores before shaping: auto (sft for a reward model whose scores are not normalised, i.e. no mean/std
    /// in its reward_spec.json; none for ours); sft (gain and bias measured once on SFT samples: mean 0, std 1);
    /// none; running (mean/std over all rollouts so far, OpenRLHF's normalize_reward); batch (whitened per rollout batch).
    /// </summary>
    public ScoreNormalization RewardNormalization { get; init; } = ScoreNormalization.Auto;
    /// <summary>SFT samples (one per training prompt) that measure the sft normalisation.</summary>
    public int NormalizationSamples { get; init; } = 256;
    /// <summary>
    /// Fold the RM's normalisation into the critic built from it (V = gain·v + bias, see docs/ppo.md). Off by default: measured,
    /// it did not raise explained variance and made the first value loss 4.6× larger (prefix values sit below last-token values).
    /// </summary>
    public bool FoldRmNormalization { get; init; }
    /// <summary>Clip scores to ±this after the penalty and normalisation (0 = off).</summary>
    public double RewardClip { get; init; } = 5.0;
    /// <summary>Sampling temperature of rollouts (logprobs use logits / T).</summary>
    public double Temperature { get; init; } = 1.0;
    /// <summary>Rollout top-k (0 = off).</summary>
    public int TopK { get; init; }
    /// <summary>Rollout top-p (1 = off).</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Response length cap.</summary>
    public int MaxNewTokens { get; init; } = 48;
    /// <summary>Rollout engine.</summary>
    public RolloutEngineKind Engine { get; init; } = RolloutEngineKind.Ort;
    /// <summary>Projections of the in-process rollout graph: fp32, or int8 (weight-only, engine ort; the trainer stays fp32/bf16).</summary>
    public Rlhf.Export.RolloutPrecision RolloutPrecision { get; init; } = Rlhf.Export.RolloutPrecision.Fp32;
    /// <summary>Truncated importance sampling cap C: the policy loss weighs each token by min(π_old/π_rollout, C) (0 = off).</summary>
    public double TisCap { get; init; } = 2.0;
    /// <summary>
    /// Rollout replicas (<c>rlhf serve rollout</c>) that generate instead of the in-process engine: addresses
    /// (<c>http://127.0.0.1:7001</c>) or DNS names resolved again every iteration into one replica per address
    /// (<c>dns:///rollout:7001</c>); empty = in process.
    /// </summary>
    public IReadOnlyList<string> RolloutEndpoints { get; init; } = [];
    /// <summary>A reward replica (<c>rlhf serve reward</c>) that scores instead of the in-process scorer; null = in process.</summary>
    public string? RewardEndpoint { get; init; }
    /// <summary>
    /// An external reward server with OpenRLHF's remote-RM contract (<c>POST</c> {"query", "prompts"} -> {"rewards"}), the
    /// full URL, e.g. <c>http://host:5000/get_reward</c>; it scores instead of the in-process scorer. null = none.
    /// </summary>
    public string? RewardUrl { get; init; }
    /// <summary>Requests per rollout shard (what one replica generates in one call; in process too, so both batch alike); 0 = the whole batch in one call.</summary>
    public int RolloutShardSize { get; init; }
    /// <summary>File with the bearer token the replicas were started with (<c>--token-file</c>); null = none.</summary>
    public string? ServiceTokenFile { get; init; }
    /// <summary>Deadline in seconds of every call to a replica (a shard, a weight push, a scoring call).</summary>
    public double ServiceTimeoutSeconds { get; init; } = 600;
    /// <summary>Evaluate on held-out prompts every N iterations (and at the end); 5 gives the early-stopping rule a path to read.</summary>
    public int EvalEvery { get; init; } = 5;
    /// <summary>
    /// Stop before <see cref="Iterations"/> once the held-out RM score has plateaued: after this many evaluations in a
    /// row without a gain of more than <see cref="EarlyStopMinDelta"/> over the best before them (0 = always run every
    /// iteration). See <see cref="EarlyStopping"/>. Default 2: on the default task held-out gold stops rising by
    /// iteration 20–25 of 60 while the RM score creeps on (one run: gold 1.72 at iteration 20, 1.75 at 60; RM score 1.56
    /// → 1.56), so the rule stops at about iteration 30 with the gold of the full run in half its PPO time.
    /// </summary>
    public int EarlyStopPatience { get; init; } = 2;
    /// <summary>The gain in held-out RM score (SFT standard deviations once normalised) that counts as progress for <see cref="EarlyStopPatience"/>.</summary>
    public double EarlyStopMinDelta { get; init; } = 0.05;
    /// <summary>Checkpoint every N iterations (0 = only at the end).</summary>
    public int CheckpointEvery { get; init; } = 10;
    /// <summary>Best-of-N sizes compared in the report.</summary>
    public IReadOnlyList<int> BestOfN { get; init; } = [1, 4, 16];
    /// <summary>Seed for prompt order and sampling.</summary>
    public long Seed { get; init; } = 1;
    /// <summary>cpu or cuda.</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>Threads for TorchSharp and ONNX Runtime (0 = all cores).</summary>
    public int Threads { get; init; }
    /// <summary>Arithmetic precision of forward/backward passes: fp32, bf16 mixed precision (projections in bfloat16; attention, norms, master weights, optimizer state, losses and checkpoints in float32), or auto (bf16 where the device multiplies bfloat16 natively, else fp32).</summary>
    public Precision Precision { get; init; } = Precision.Auto;

    /// <summary>Our RM folder in force: <see cref="RmModel"/>, else runs/rm unless <see cref="RewardModel"/> is set.</summary>
    public string? RmFolder() => RmModel ?? (RewardModel is null && RewardUrl is null ? "runs/rm" : null);

    /// <summary>Throws with what to change when a value is out of range.</summary>
    public void Validate()
    {
        var e = new List<string>();
        if (DatasetColumns.Problem() is { } columns) e.Add(columns);
        if (string.IsNullOrWhiteSpace(Out)) e.Add("out must be a folder");
        if (Iterations < 1 || RolloutBatch < 1 || PpoEpochs < 1 || MiniBatch < 1 || GradAccum < 1) e.Add("iterations, rollout_batch, ppo_epochs, mini_batch and grad_accum must be ≥ 1");
        if (RolloutBatch % MiniBatch != 0) e.Add($"rollout_batch ({RolloutBatch}) must be a multiple of mini_batch ({MiniBatch})");
        if (NSamplesPerPrompt < 1 || RolloutBatch % NSamplesPerPrompt != 0) e.Add($"n_samples_per_prompt ({NSamplesPerPrompt}) must be ≥ 1 and divide rollout_batch ({RolloutBatch})");
        if (AdvantageEstimator is AdvantageEstimator.Rloo or AdvantageEstimator.Grpo or AdvantageEstimator.DrGrpo && NSamplesPerPrompt < 2)
            e.Add($"advantage_estimator {ConfigLoader.EnumName(AdvantageEstimator)} compares the samples of a prompt: set n_samples_per_prompt ≥ 2");
        if (ActorLr <= 0 || CriticLr <= 0) e.Add("actor_lr and critic_lr must be > 0");
        if (ClipEps <= 0 || ValueClipEps <= 0) e.Add("clip_eps and value_clip_eps must be > 0");
        if (Gamma is < 0 or > 1 || Lambda is < 0 or > 1) e.Add("gamma and lambda must be in [0, 1]");
        if (InitKlCoef < 0) e.Add("init_kl_coef must be ≥ 0");
        if (AdaptiveKl && (TargetKl <= 0 || KlHorizon <= 0)) e.Add("target_kl and kl_horizon must be > 0 with adaptive_kl");
        if (Temperature <= 0) e.Add("temperature must be > 0 (PPO samples its rollouts)");
        if (TopK < 0 || TopP is <= 0 or > 1) e.Add("top_k must be ≥ 0 and top_p in (0, 1]");
        if (MaxNewTokens < 1) e.Add("max_new_tokens must be ≥ 1");
        if (EvalEvery < 1 || CheckpointEvery < 0 || EvalPrompts < 1) e.Add("eval_every and eval_prompts must be ≥ 1, checkpoint_every ≥ 0");
        if (EarlyStopPatience < 0 || !(EarlyStopMinDelta >= 0)) e.Add("early_stop_patience must be ≥ 0 (0 = off) and early_stop_min_delta ≥ 0");
        if (BestOfN.Any(n => n < 1)) e.Add("best_of_n sizes must be ≥ 1");
        if (RewardNormalization == ScoreNormalization.Batch && RolloutBatch < 2) e.Add("reward_normalization batch needs rollout_batch ≥ 2");
        if (RewardClip < 0) e.Add("reward_clip must be ≥ 0 (0 = off)");
        if (RolloutShardSize < 0) e.Add("rollout_shard_size must be ≥ 0 (0 = the whole batch in one call)");
        if (ServiceTimeoutSeconds <= 0) e.Add("service_timeout_seconds must be > 0");
        if (!(TisCap >= 0)) e.Add("tis_cap must be ≥ 0 (0 = off)");
        if (RolloutPrecision == Rlhf.Export.RolloutPrecision.Int8 && (Engine != RolloutEngineKind.Ort || RolloutEndpoints.Count > 0))
            e.Add("rollout_precision int8 is built into the in-process ort engine's graph: use engine ort without rollout_endpoints " +
                  "(replicas serve whatever folder they were given: export it with `rlhf export --precision int8`)");
        if (RolloutEndpoints.Count > 0 && Engine == RolloutEngineKind.Torch) e.Add("rollout_endpoints need engine ort or genai (the replicas' engine), not torch");
        if (RewardUrl is not null && (RewardEndpoint is not null || RewardModel is not null))
            e.Add("reward_url replaces the scorer: drop reward_endpoint / reward_model (give one way to score)");
        foreach (string u in RolloutEndpoints)
            try { Rlhf.Inference.Services.ReplicaTarget.Parse(u); }
            catch (ArgumentException) { e.Add($"rollout endpoint '{u}' must be http://host:port or dns:///name:port"); }
        foreach (string u in new[] { RewardEndpoint, RewardUrl }.OfType<string>())
            if (!Uri.TryCreate(u, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https")) e.Add($"endpoint '{u}' must be an http://host:port address");
        if (ServiceTokenFile is not null && !File.Exists(ServiceTokenFile)) e.Add($"service_token_file '{ServiceTokenFile}' does not exist");
        if (NormalizationSamples < 2) e.Add("normalization_samples must be ≥ 2");
        if (PtxCoef < 0 || PtxBatchSize < 1 || PtxSeqLen < 2) e.Add("ptx_coef must be ≥ 0, ptx_batch_size ≥ 1 and ptx_seq_len ≥ 2");
        e.AddRange(AdamWSettings.Problems(WeightDecay, Beta1, Beta2, AdamEps));
        e.AddRange(FineTuningProblems());
        if (e.Count > 0) throw new InvalidDataException("Invalid PPO config: " + string.Join("; ", e) + ".");
    }
}

/// <summary>How <see cref="PpoConfig.MissingEosPenalty"/> applies to a response that ended without EOS.</summary>
public enum EosPenaltyMode
{
    /// <summary>s = penalty (InstructGPT-style: a truncated sample gets a fixed low score).</summary>
    Replace,
    /// <summary>s = r − |penalty| (TRL's <c>missing_eos_penalty</c>).</summary>
    Subtract,
}

/// <summary>Normalisation of sequence scores before they become rewards.</summary>
public enum ScoreNormalization
{
    /// <summary><see cref="Sft"/> when the reward model's scores are not normalised (no mean/std in its reward_spec.json), else <see cref="None"/>.</summary>
    Auto,
    /// <summary>s' = gain·r + bias with gain = 1/σ, bias = −μ/σ of the RM's scores on SFT samples, measured once before the first update.</summary>
    Sft,
    /// <summary>Scores as the reward model (and the EOS penalty) gave them.</summary>
    None,
    /// <summary>(s − μ)/σ with μ, σ running over every rollout so far (<see cref="RunningMoments"/>; OpenRLHF <c>normalize_reward</c>).</summary>
    Running,
    /// <summary>(s − μ_b)/σ_b over the rollout batch (TRL's <c>whiten</c> of scores).</summary>
    Batch,
}
