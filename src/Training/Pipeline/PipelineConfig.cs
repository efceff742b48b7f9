using Rlhf.Training.Dpo;
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
    /// <summary>
    /// Rounds of RM → PPO. Each round after the first samples K responses per prompt (<see cref="RoundPrompts"/> fresh
    /// prompts) from the latest policy, has the default task's annotators rank them, retrains the RM from the previous one
    /// on the old and new comparisons, and runs PPO again from the latest policy (π_ref stays the SFT model).
    /// </summary>
    public int Rounds { get; init; } = 1;
    /// <summary>Prompts labelled in each round after the first (K policy samples each, ranked by the annotators).</summary>
    public int RoundPrompts { get; init; } = 2000;
    /// <summary>
    /// What follows SFT: ppo (RM, then PPO with a critic), rloo, grpo, dr_grpo or reinforce_pp (RM, then the PPO stage
    /// with that critic-free estimator: <see cref="PpoConfig.AdvantageEstimator"/>, at least 4 samples per prompt for the
    /// group estimators unless ppo.n_samples_per_prompt says otherwise; see <see cref="PpoForAlgorithm"/>), or dpo (no RM: DPO on the labelled comparisons).
    /// </summary>
    public PipelineAlgorithm Algorithm { get; init; } = PipelineAlgorithm.Ppo;
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
    /// <summary>DPO settings, used with algorithm dpo (its out, sft_model, seed, device and threads come from the pipeline).</summary>
    public DpoConfig Dpo { get; init; } = new();

    /// <summary>
    /// The PPO stage's settings for <see cref="Algorithm"/>: its advantage estimator, k = 4 for the group estimators when
    /// k is 1, and for grpo β = 0.25 when init_kl_coef is the default (measured: 0.15 let grpo's KL pass 6 nats, 0.25
    /// held it at 4.5 with 0.93 of PPO's gold gain; docs/ppo.md).
    /// </summary>
    public PpoConfig PpoForAlgorithm()
    {
        var estimator = Algorithm switch
        {
            PipelineAlgorithm.Rloo => AdvantageEstimator.Rloo,
            PipelineAlgorithm.Grpo => AdvantageEstimator.Grpo,
            PipelineAlgorithm.DrGrpo => AdvantageEstimator.DrGrpo,
            PipelineAlgorithm.ReinforcePp => AdvantageEstimator.ReinforcePp,
            _ => Ppo.AdvantageEstimator,
        };
        bool groups = estimator is AdvantageEstimator.Rloo or AdvantageEstimator.Grpo or AdvantageEstimator.DrGrpo;
        double beta = estimator == AdvantageEstimator.Grpo && Ppo.InitKlCoef == new PpoConfig().InitKlCoef ? 0.25 : Ppo.InitKlCoef;
        return Ppo with
        {
            AdvantageEstimator = estimator, NSamplesPerPrompt = groups && Ppo.NSamplesPerPrompt == 1 ? 4 : Ppo.NSamplesPerPrompt, InitKlCoef = beta,
        };
    }

    /// <summary>
    /// Refuses stage keys that the pipeline sets itself (each stage's out, seed, device, threads, and the model folders
    /// that chain the stages): a value there would be silently replaced, so it is an error that says what to use instead.
    /// </summary>
    public void Validate()
    {
        var e = new List<string>();
        void Owned(string key, bool set, string instead) { if (set) e.Add($"{key} is set by the pipeline; {instead}"); }
        SftConfig sft = new();
        RmConfig rm = new();
        PpoConfig ppo = new();
        DpoConfig dpo = new();
        foreach (var (name, o, seed, device, threads) in new[]
                 {
                     ("sft", Sft.Out != sft.Out, Sft.Seed != sft.Seed, Sft.Device != sft.Device, Sft.Threads != sft.Threads),
                     ("rm", Rm.Out != rm.Out, Rm.Seed != rm.Seed, Rm.Device != rm.Device, Rm.Threads != rm.Threads),
                     ("ppo", Ppo.Out != ppo.Out, Ppo.Seed != ppo.Seed, Ppo.Device != ppo.Device, Ppo.Threads != ppo.Threads),
                     ("dpo", Dpo.Out != dpo.Out, Dpo.Seed != dpo.Seed, Dpo.Device != dpo.Device, Dpo.Threads != dpo.Threads),
                 })
        {
            Owned($"{name}.out", o, $"the stage writes to {name}/ inside the pipeline's out");
            Owned($"{name}.seed", seed, "set the top-level seed (--seed)");
            Owned($"{name}.device", device, "set the top-level device (--device)");
            Owned($"{name}.threads", threads, "set the top-level threads (--threads)");
        }
        Owned("rm.sft_model", Rm.SftModel != rm.SftModel, "use sft_from (--sft-from)");
        Owned("ppo.sft_model", Ppo.SftModel != ppo.SftModel, "use sft_from (--sft-from)");
        Owned("ppo.rm_model", Ppo.RmModel != ppo.RmModel, "use rm_from (--rm-from)");
        Owned("dpo.sft_model", Dpo.SftModel != dpo.SftModel, "use sft_from (--sft-from)");
        if (Algorithm == PipelineAlgorithm.Dpo && (Rounds > 1 || RmFrom is not null))
            e.Add("algorithm dpo trains no reward model and runs once: drop rounds and rm_from");
        Owned("rm.init_model", Rm.InitModel != rm.InitModel, "each round after the first continues from the previous round's RM");
        Owned("ppo.policy_model", Ppo.PolicyModel != ppo.PolicyModel, "each round after the first starts from the previous round's policy");
        if (Rounds < 1) e.Add("rounds must be ≥ 1");
        if (RoundPrompts < 1) e.Add("round_prompts must be ≥ 1");
        if (Rounds > 1 && Rm.EvalPrompts < 1) e.Add("rounds > 1 measure the RM on held-out policy samples: rm.eval_prompts must be ≥ 1");
        if (Rounds > 1 && (Rm.RankingsFile is not null || Rm.PairsFile is not null))
            e.Add("rounds > 1 label policy samples with the default task's annotators: drop rm.rankings_file and rm.pairs_file");
        if (e.Count > 0) throw new InvalidDataException("Invalid pipeline config: " + string.Join("; ", e) + ".");
    }
}

/// <summary>What the pipeline runs after SFT (<see cref="PipelineConfig.Algorithm"/>).</summary>
public enum PipelineAlgorithm
{
    /// <summary>RM, then PPO with a critic (GAE).</summary>
    Ppo,
    /// <summary>RM, then RLOO.</summary>
    Rloo,
    /// <summary>RM, then GRPO.</summary>
    Grpo,
    /// <summary>RM, then Dr. GRPO.</summary>
    DrGrpo,
    /// <summary>RM, then REINFORCE++.</summary>
    ReinforcePp,
    /// <summary>DPO on the labelled comparisons, no RM.</summary>
    Dpo,
}
