using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Inference.Rollout;

namespace Rlhf.Training.RewardModel;

/// <summary>Reward-model stage settings. JSON keys are the snake_case property names (docs/configuration.md).</summary>
public sealed record RmConfig : FineTuningKeys
{
    /// <summary>Output folder: HF sequence-classification folder, rankings, metrics, plots, summary.json, onnx/.</summary>
    public string Out { get; init; } = "runs/rm";
    /// <summary>The SFT model folder the RM starts from (and samples responses from).</summary>
    public string SftModel { get; init; } = "runs/sft";
    /// <summary>A reward-model folder to continue training from (its score head included); null = the SFT model with a new head.</summary>
    public string? InitModel { get; init; }
    /// <summary>Ranked records (prompt,responses,ranking) to train on; null = sample K responses from the SFT model and let the simulated annotators rank them.</summary>
    public string? RankingsFile { get; init; }
    /// <summary>Preference pairs (prompt,chosen,rejected) to train on, alone or added to the rankings.</summary>
    public string? PairsFile { get; init; }
    /// <summary>Held-out ranked records for accuracy; null = held-out prompts of the default task ranked by the gold scorer.</summary>
    public string? EvalFile { get; init; }
    /// <summary>Held-out preference pairs for accuracy (any format pairs_file reads, conversational included), alone or added to eval_file.</summary>
    public string? EvalPairsFile { get; init; }
    /// <summary>Skip (and count) malformed rows instead of failing.</summary>
    public bool SkipMalformed { get; init; }
    /// <summary>The data files' column names for our fields (prompt, chosen, rejected) where they differ, e.g. {"prompt": "question"} (OpenRLHF's input_key/output_key/chosen_key/rejected_key).</summary>
    public DatasetColumns DatasetColumns { get; init; } = new();
    /// <summary>
    /// Default task: prompts to label for training, sized by what PPO needs (its held-out gold gain, not RM accuracy).
    /// Measured 2026-12-06 (16 prompts per batch, bf16, PPO stopping early): 6000 prompts × 2 passes (750 steps, 329 s
    /// on 2 cores) gave 87.3% and a PPO gold gain of 1.27 SFT std; 6000 × 1 pass at lr 1.5e-3 (375 steps, 148 s) gave
    /// 80.2% and 0.96 std on the same SFT model (83.3% and 1.30 on another); 4000 × 1 gave 80.0% and 1.11 std. Only
    /// 6000 × 2 clears the 1.2-std bar on every run, so the RM stays the longest stage of the main job.
    /// </summary>
    public int TrainPrompts { get; init; } = 6000;
    /// <summary>Default task: held-out prompts for accuracy and normalisation.</summary>
    public int EvalPrompts { get; init; } = 200;
    /// <summary>Responses sampled per prompt (K, 2–9).</summary>
    public int K { get; init; } = 8;
    /// <summary>Simulated annotators per ranking.</summary>
    public int Annotators { get; init; } = 5;
    /// <summary>Scale of the annotators' noise (1 = default panel).</summary>
    public double AnnotatorNoise { get; init; } = 1.0;
    /// <summary>Sampling temperature for the K responses.</summary>
    public double SampleTemperature { get; init; } = 1.0;
    /// <summary>Tokens per sampled response.</summary>
    public int MaxNewTokens { get; init; } = 48;
    /// <summary>Engine that samples the K responses to label: ort (ours), genai (ONNX Runtime GenAI) or torch.</summary>
    public RolloutEngineKind Engine { get; init; } = RolloutEngineKind.Ort;
    /// <summary>
    /// Projections of the graph that samples the K responses: fp32, or int8 (weight-only, engine ort, GroupQueryAttention
    /// graph). On 2 AVX2 cores int8 sampled 12,000 responses in 22.6–26.3 s against fp32's 29.0–29.1 s: 15–25 s of the main
    /// job, too little to change the RM's data for, so fp32 stays the default (docs/precision.md).
    /// </summary>
    public Rlhf.Export.RolloutPrecision RolloutPrecision { get; init; } = Rlhf.Export.RolloutPrecision.Fp32;
    /// <summary>
    /// Passes over the comparisons. InstructGPT used 1 (more overfits its 6B RM). The 3.5M default model underfits
    /// instead (its training loss still falls at the end of a pass), and on the default task one pass left PPO below
    /// the gold bar where two cleared it (see <see cref="TrainPrompts"/>).
    /// </summary>
    public int Epochs { get; init; } = 2;
    /// <summary>
    /// Prompts per batch; all C(K,2) pairs of a prompt share its batch. 16 (128 sequences of K = 8): larger batches run
    /// more tokens per second; on the default task (6000 prompts × 2 passes, bf16) 16 per batch at lr 1e-3 reached
    /// 87.3% in 329 s of training where 4 per batch at 5e-4 in fp32 had reached 87.0% in 463 s.
    /// </summary>
    public int PromptsPerBatch { get; init; } = 16;
    /// <summary>
    /// Keep only the SFT model's first N decoder layers in the RM (0 = all): a smaller, faster RM (InstructGPT paired a
    /// 6B RM with its 175B policy). PPO's critic starts from the RM and is as small. On the default task 2 of 4 layers
    /// gave 83.8% and a PPO gold gain of 1.10 SFT std on one seed's SFT model (83.7%, 1.32 on another), below the
    /// 1.2-std bar that all 4 clear, so the default keeps them all.
    /// </summary>
    public int NumLayers { get; init; }
    /// <summary>Longest tokenized prompt + response.</summary>
    public int MaxSeqLen { get; init; } = 96;
    /// <summary>Peak learning rate (decays to 0). Measured on the default task with 4 prompts per batch (4000 prompts, 1
    /// pass): 2.5e-4 → 77.5%, 5e-4 → 81.3%, 1e-3 → 77.0%, 3e-3 → 72.7% held-out accuracy; with 16 per batch 1e-3 (the
    /// 87.3% of <see cref="TrainPrompts"/>).</summary>
    public double Lr { get; init; } = 1e-3;
    /// <summary>Decay shape (cosine, linear, constant).</summary>
    public Sft.LrDecay Decay { get; init; } = Sft.LrDecay.Cosine;
    /// <summary>Linear warm-up steps.</summary>
    public int WarmupSteps { get; init; }
    /// <summary>AdamW weight decay on matrices.</summary>
    public double WeightDecay { get; init; } = 0.0;
    /// <summary>AdamW β1.</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW β2.</summary>
    public double Beta2 { get; init; } = 0.95;
    /// <summary>AdamW ε.</summary>
    public double AdamEps { get; init; } = 1e-8;
    /// <summary>Clip the gradient norm (0 = off).</summary>
    public double GradClip { get; init; } = 1.0;
    /// <summary>Margin m in −log σ(r_w − r_l − m).</summary>
    public double Margin { get; init; }
    /// <summary>Evaluate every N steps (and at the end).</summary>
    public int EvalEvery { get; init; } = 500;
    /// <summary>Checkpoint every N steps (0 = only at the end).</summary>
    public int CheckpointEvery { get; init; } = 250;
    /// <summary>Also scale rewards to std 1 on SFT samples (mean 0 always).</summary>
    public bool NormalizeStd { get; init; } = true;
    /// <summary>Seed for sampling, labelling, head initialisation and data order.</summary>
    public long Seed { get; init; } = 1;
    /// <summary>cpu or cuda.</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>Intra-op threads (0 = all cores).</summary>
    public int Threads { get; init; }
    /// <summary>Arithmetic precision of forward/backward passes: fp32, bf16 mixed precision (projections in bfloat16; attention, norms, master weights, optimizer state, losses and checkpoints in float32), or auto (bf16 where the device multiplies bfloat16 natively, else fp32).</summary>
    public Precision Precision { get; init; } = Precision.Auto;

    /// <summary>Throws with what to change when a value is out of range.</summary>
    public void Validate()
    {
        var e = new List<string>();
        if (DatasetColumns.Problem() is { } columns) e.Add(columns);
        if (string.IsNullOrWhiteSpace(Out)) e.Add("out must be a folder");
        if (K is < 2 or > 9) e.Add("k must be in 2..9");
        if (TrainPrompts < 1 || EvalPrompts < 0) e.Add("train_prompts must be ≥ 1 and eval_prompts ≥ 0");
        if (Annotators < 1) e.Add("annotators must be ≥ 1");
        if (AnnotatorNoise < 0) e.Add("annotator_noise must be ≥ 0");
        if (SampleTemperature <= 0) e.Add("sample_temperature must be > 0");
        if (MaxNewTokens < 1) e.Add("max_new_tokens must be ≥ 1");
        if (Epochs < 1) e.Add("epochs must be ≥ 1");
        if (PromptsPerBatch < 1) e.Add("prompts_per_batch must be ≥ 1");
        if (MaxSeqLen < 4) e.Add("max_seq_len must be ≥ 4");
        if (NumLayers < 0) e.Add("num_layers must be ≥ 0");
        if (RolloutPrecision == Rlhf.Export.RolloutPrecision.Int8 && Engine != RolloutEngineKind.Ort)
            e.Add("rollout_precision int8 is built into the ort engine's graph: use engine ort, or rollout_precision fp32");
        if (Lr <= 0) e.Add("lr must be > 0");
        if (GradClip < 0 || Margin < 0) e.Add("grad_clip and margin must be ≥ 0");
        if (EvalEvery < 1 || CheckpointEvery < 0) e.Add("eval_every must be ≥ 1 and checkpoint_every ≥ 0");
        e.AddRange(Common.AdamWSettings.Problems(WeightDecay, Beta1, Beta2, AdamEps));
        e.AddRange(FineTuningProblems());
        if (e.Count > 0) throw new InvalidDataException("Invalid RM config: " + string.Join("; ", e) + ".");
    }
}
