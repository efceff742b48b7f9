using Rlhf.Training.Data;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.RewardModel;
using Rlhf.Inference.Rollout;

namespace Rlhf.Training.Dpo;

/// <summary>DPO stage settings. JSON keys are the snake_case property names (docs/configuration.md).</summary>
public sealed record DpoConfig : FineTuningKeys
{
    /// <summary>Output folder: the aligned policy (HF folder + onnx/), labelled data, metrics, plots, summary.json.</summary>
    public string Out { get; init; } = "runs/dpo";
    /// <summary>SFT folder: the policy's start and the frozen reference π_ref.</summary>
    public string SftModel { get; init; } = "runs/sft";
    /// <summary>Ranked records (prompt, responses, ranking): all C(K,2) pairs, each prompt weighted once; null (with no pairs file) = label the default task.</summary>
    public string? RankingsFile { get; init; }
    /// <summary>Preference pairs (prompt, chosen, rejected; TRL's columns), alone or added to the rankings.</summary>
    public string? PairsFile { get; init; }
    /// <summary>Held-out ranked records for implicit-reward accuracy; null = the default task's held-out prompts ranked by gold.</summary>
    public string? EvalFile { get; init; }
    /// <summary>Held-out preference pairs for implicit-reward accuracy (any format pairs_file reads), alone or added to eval_file.</summary>
    public string? EvalPairsFile { get; init; }
    /// <summary>Skip (and count) malformed rows instead of failing.</summary>
    public bool SkipMalformed { get; init; }
    /// <summary>The data files' column names for our fields (prompt, chosen, rejected) where they differ, e.g. {"prompt": "question"} (OpenRLHF's input_key/output_key/chosen_key/rejected_key).</summary>
    public DatasetColumns DatasetColumns { get; init; } = new();
    /// <summary>Default task: prompts labelled for training (K responses from the SFT model ranked by the simulated annotators, as the RM stage does).</summary>
    public int TrainPrompts { get; init; } = 3000;
    /// <summary>Default task: held-out prompts whose responses the gold scorer ranks.</summary>
    public int EvalPrompts { get; init; } = 200;
    /// <summary>Responses sampled per prompt (K, 2–9).</summary>
    public int K { get; init; } = 4;
    /// <summary>Sampling temperature of the labelled responses.</summary>
    public double SampleTemperature { get; init; } = 1.0;
    /// <summary>Tokens per sampled response (labelling and the final evaluation).</summary>
    public int MaxNewTokens { get; init; } = 48;
    /// <summary>β: the strength of the implicit KL constraint (r = β·log π/π_ref).</summary>
    public double Beta { get; init; } = 0.1;
    /// <summary>sigmoid (DPO) or ipo.</summary>
    public DpoLossType Loss { get; init; } = DpoLossType.Sigmoid;
    /// <summary>Passes over the comparisons.</summary>
    public int Epochs { get; init; } = 1;
    /// <summary>Prompts per batch; all C(K,2) pairs of a prompt share its batch (each of its K sequences is run once).</summary>
    public int PromptsPerBatch { get; init; } = 8;
    /// <summary>Longest prompt + response in tokens (the prompt loses tokens from its start first, then the response from its end).</summary>
    public int MaxSeqLen { get; init; } = 96;
    /// <summary>Peak learning rate (cosine decay to 0 after warm-up).</summary>
    public double Lr { get; init; } = 5e-5;
    /// <summary>Linear warm-up steps.</summary>
    public int WarmupSteps { get; init; } = 20;
    /// <summary>AdamW weight decay on matrices.</summary>
    public double WeightDecay { get; init; }
    /// <summary>AdamW β1.</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW β2.</summary>
    public double Beta2 { get; init; } = 0.95;
    /// <summary>AdamW ε.</summary>
    public double AdamEps { get; init; } = 1e-8;
    /// <summary>Clip the gradient norm (0 = off).</summary>
    public double GradClip { get; init; } = 1.0;
    /// <summary>Evaluate held-out implicit-reward accuracy every N steps (and at the end).</summary>
    public int EvalEvery { get; init; } = 100;
    /// <summary>Checkpoint every N steps (0 = only at the end).</summary>
    public int CheckpointEvery { get; init; } = 100;
    /// <summary>Default task: held-out prompts sampled from the DPO and SFT models at the end (gold gain, KL to SFT).</summary>
    public int PolicyEvalPrompts { get; init; } = 128;
    /// <summary>Engine that samples (labelling and the final evaluation): ort, genai or torch.</summary>
    public RolloutEngineKind Engine { get; init; } = RolloutEngineKind.Ort;
    /// <summary>Seed for sampling, labelling and data order.</summary>
    public long Seed { get; init; } = 1;
    /// <summary>cpu or cuda.</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>Intra-op threads (0 = all cores).</summary>
    public int Threads { get; init; }
    /// <summary>Arithmetic precision of forward/backward passes: fp32, bf16 mixed precision (projections in bfloat16; attention, norms, master weights, optimizer state, losses and checkpoints in float32), or auto (bf16 where the device multiplies bfloat16 natively, else fp32).</summary>
    public Precision Precision { get; init; } = Precision.Auto;

    /// <summary>The RM stage's labelling settings that produce this stage's comparisons (the same code labels both).</summary>
    internal RmConfig Labelling() => new()
    {
        Out = Out, SftModel = SftModel, RankingsFile = RankingsFile, PairsFile = PairsFile, EvalFile = EvalFile, EvalPairsFile = EvalPairsFile, SkipMalformed = SkipMalformed, DatasetColumns = DatasetColumns,
        TrainPrompts = TrainPrompts, EvalPrompts = EvalPrompts, K = K, SampleTemperature = SampleTemperature, MaxNewTokens = MaxNewTokens,
        MaxSeqLen = MaxSeqLen, Engine = Engine, Seed = Seed, Threads = Threads,
    };

    /// <summary>Throws with what to change when a value is out of range.</summary>
    public void Validate()
    {
        var e = new List<string>();
        if (DatasetColumns.Problem() is { } columns) e.Add(columns);
        if (string.IsNullOrWhiteSpace(Out)) e.Add("out must be a folder");
        if (!(Beta > 0)) e.Add("beta must be > 0 (it scales the implicit reward β·log π/π_ref)");
        if (K is < 2 or > 9) e.Add("k must be in 2..9");
        if (TrainPrompts < 1 || EvalPrompts < 0 || PolicyEvalPrompts < 0) e.Add("train_prompts must be ≥ 1, eval_prompts and policy_eval_prompts ≥ 0");
        if (SampleTemperature <= 0) e.Add("sample_temperature must be > 0");
        if (MaxNewTokens < 1) e.Add("max_new_tokens must be ≥ 1");
        if (Epochs < 1 || PromptsPerBatch < 1) e.Add("epochs and prompts_per_batch must be ≥ 1");
        if (MaxSeqLen < 4) e.Add("max_seq_len must be ≥ 4");
        if (!(Lr > 0) || WarmupSteps < 0) e.Add("lr must be > 0 and warmup_steps ≥ 0");
        if (GradClip < 0) e.Add("grad_clip must be ≥ 0");
        if (EvalEvery < 1 || CheckpointEvery < 0) e.Add("eval_every must be ≥ 1 and checkpoint_every ≥ 0");
        e.AddRange(AdamWSettings.Problems(WeightDecay, Beta1, Beta2, AdamEps));
        e.AddRange(FineTuningProblems());
        if (e.Count > 0) throw new InvalidDataException("Invalid DPO config: " + string.Join("; ", e) + ".");
    }
}
