using Rlhf.Training.Data;
using Rlhf.Training.Model;

namespace Rlhf.Training.Sft;

/// <summary>Supervised fine-tuning settings. JSON keys are the snake_case property names (docs/configuration.md).</summary>
public sealed record SftConfig : FineTuningKeys
{
    /// <summary>Output folder: an HF model folder plus metrics.csv, loss.png, summary.json, checkpoints/.</summary>
    public string Out { get; init; } = "runs/sft";
    /// <summary>HF model folder to start from; null = the default tiny model (models/tiny) with a tokenizer trained on the default corpus.</summary>
    public string? InitFrom { get; init; }
    /// <summary>Model architecture for a fresh model (HF config.json; vocab_size is taken from the tokenizer).</summary>
    public string ModelConfig { get; init; } = "models/tiny/config.json";
    /// <summary>Vocabulary size of the byte-level BPE trained for a fresh model.</summary>
    public int TokenizerVocabSize { get; init; } = 2048;
    /// <summary>Training demonstrations (CSV/JSONL with prompt,response); null = the default task's generator.</summary>
    public string? TrainFile { get; init; }
    /// <summary>Held-out demonstrations; null = the default task's held-out split (or none with a train file).</summary>
    public string? EvalFile { get; init; }
    /// <summary>Skip (and count) malformed rows instead of failing.</summary>
    public bool SkipMalformed { get; init; }
    /// <summary>The data files' column names for our fields (prompt, response, completion, messages) where they differ, e.g. {"prompt": "question"} (OpenRLHF's input_key/output_key/chosen_key/rejected_key).</summary>
    public DatasetColumns DatasetColumns { get; init; } = new();
    /// <summary>Default-task demonstrations generated for training.</summary>
    public int DefaultTrainSize { get; init; } = 16000;
    /// <summary>Default-task demonstrations held out for eval.</summary>
    public int DefaultEvalSize { get; init; } = 400;
    /// <summary>Passes over the training set.</summary>
    public int Epochs { get; init; } = 1;
    /// <summary>Optimizer steps cap (0 = epochs decide).</summary>
    public int MaxSteps { get; init; }
    /// <summary>Sequences per micro-batch.</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>Micro-batches per optimizer step.</summary>
    public int GradAccum { get; init; } = 1;
    /// <summary>Longest tokenized sequence (BOS + prompt + response + EOS); longer ones are truncated.</summary>
    public int MaxSeqLen { get; init; } = 96;
    /// <summary>Peak learning rate.</summary>
    public double Lr { get; init; } = 3e-3;
    /// <summary>Decay shape after warm-up (cosine, linear, constant).</summary>
    public LrDecay Decay { get; init; } = LrDecay.Cosine;
    /// <summary>Final learning rate as a fraction of the peak.</summary>
    public double MinLrRatio { get; init; } = 0.1;
    /// <summary>Linear warm-up steps (InstructGPT: none).</summary>
    public int WarmupSteps { get; init; }
    /// <summary>AdamW decoupled weight decay (applied to matrices, not to norms or biases).</summary>
    public double WeightDecay { get; init; } = 0.1;
    /// <summary>AdamW β1.</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW β2.</summary>
    public double Beta2 { get; init; } = 0.95;
    /// <summary>AdamW ε.</summary>
    public double AdamEps { get; init; } = 1e-8;
    /// <summary>Clip the global gradient L2 norm to this (0 = off).</summary>
    public double GradClip { get; init; } = 1.0;
    /// <summary>Residual dropout (overrides the model config when set).</summary>
    public double? ResidualDropout { get; init; }
    /// <summary>Attention dropout (overrides the model config when set).</summary>
    public double? AttentionDropout { get; init; }
    /// <summary>Evaluate held-out loss every N optimizer steps (and at the end).</summary>
    public int EvalEvery { get; init; } = 100;
    /// <summary>Write a resumable checkpoint every N optimizer steps (0 = only at the end).</summary>
    public int CheckpointEvery { get; init; } = 100;
    /// <summary>Samples generated at the end to report the gold-score distribution.</summary>
    public int SampleCount { get; init; } = 64;
    /// <summary>Seed for data order, initialisation, dropout and sampling.</summary>
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
        if (Epochs < 1) e.Add("epochs must be ≥ 1");
        if (MaxSteps < 0) e.Add("max_steps must be ≥ 0");
        if (BatchSize < 1) e.Add("batch_size must be ≥ 1");
        if (GradAccum < 1) e.Add("grad_accum must be ≥ 1");
        if (MaxSeqLen < 4) e.Add("max_seq_len must be ≥ 4");
        if (Lr <= 0) e.Add("lr must be > 0");
        if (MinLrRatio is < 0 or > 1) e.Add("min_lr_ratio must be in [0, 1]");
        if (WarmupSteps < 0) e.Add("warmup_steps must be ≥ 0");
        e.AddRange(Common.AdamWSettings.Problems(WeightDecay, Beta1, Beta2, AdamEps));
        e.AddRange(FineTuningProblems());
        if (GradClip < 0) e.Add("grad_clip must be ≥ 0 (0 = off)");
        if (ResidualDropout is < 0 or >= 1 || AttentionDropout is < 0 or >= 1) e.Add("dropouts must be in [0, 1)");
        if (EvalEvery < 1) e.Add("eval_every must be ≥ 1");
        if (CheckpointEvery < 0) e.Add("checkpoint_every must be ≥ 0");
        if (DefaultTrainSize < 1 || DefaultEvalSize < 0) e.Add("default_train_size must be ≥ 1 and default_eval_size ≥ 0");
        if (TokenizerVocabSize < 260) e.Add("tokenizer_vocab_size must be ≥ 260 (256 bytes + special tokens)");
        if (SampleCount < 0) e.Add("sample_count must be ≥ 0");
        if (e.Count > 0) throw new InvalidDataException("Invalid SFT config: " + string.Join("; ", e) + ".");
    }
}
