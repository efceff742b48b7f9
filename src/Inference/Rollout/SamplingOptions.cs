namespace Rlhf.Inference.Rollout;

/// <summary>
/// How one request samples its response tokens. Processing order per step (as in Hugging Face <c>generate</c>):
/// repetition penalty on the raw logits -> divide by <see cref="Temperature"/> -> top-k -> top-p -> draw.
/// </summary>
public sealed record SamplingOptions
{
    /// <summary>Softmax temperature; 0 means greedy (argmax, no random draw). Rollout logprobs use the same T.</summary>
    public float Temperature { get; init; } = 1f;

    /// <summary>Keep only the K most likely tokens before drawing; 0 turns top-k off.</summary>
    public int TopK { get; init; }

    /// <summary>Nucleus sampling: keep the smallest most-likely set whose probability reaches P; 1 turns it off.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>
    /// CTRL / Hugging Face repetition penalty; 1 turns it off. For every token id already present in prompt + generated
    /// tokens: <c>logit = logit &gt; 0 ? logit / penalty : logit * penalty</c> (applied once per distinct id).
    /// </summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>Most tokens generated after the prompt.</summary>
    public int MaxNewTokens { get; init; } = 128;

    /// <summary>Seed of this request's own <see cref="Rng"/>: the same seed gives the same tokens whatever the batch.</summary>
    public ulong Seed { get; init; }

    /// <summary>Record the K most likely tokens (and their logprobs, as <see cref="RolloutResult.LogProbs"/>'s) at every step; 0 = off, at most 20.</summary>
    public int TopLogProbs { get; init; }

    /// <summary>Generation stops when the decoded response contains one of these (the response is cut before it).</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];

    /// <summary>True when the step is an argmax (temperature 0).</summary>
    public bool IsGreedy => Temperature == 0f;

    /// <summary>Throws <see cref="ArgumentException"/> naming the option to change when a value is out of range.</summary>
    public SamplingOptions Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0f)
            throw new ArgumentException($"Temperature must be a finite number >= 0 (0 = greedy); got {Temperature}.");
        if (TopK < 0)
            throw new ArgumentException($"TopK must be >= 0 (0 = off); got {TopK}.");
        if (!(TopP > 0f && TopP <= 1f))
            throw new ArgumentException($"TopP must be in (0, 1] (1 = off); got {TopP}.");
        if (!float.IsFinite(RepetitionPenalty) || RepetitionPenalty <= 0f)
            throw new ArgumentException($"RepetitionPenalty must be a finite number > 0 (1 = off); got {RepetitionPenalty}.");
        if (MaxNewTokens < 1)
            throw new ArgumentException($"MaxNewTokens must be >= 1; got {MaxNewTokens}.");
        if (TopLogProbs is < 0 or > 20)
            throw new ArgumentException($"TopLogProbs must be in [0, 20] (0 = off); got {TopLogProbs}.");
        if (StopStrings is null)
            throw new ArgumentException("StopStrings must not be null; use an empty list for no stop strings.");
        for (int i = 0; i < StopStrings.Count; i++)
        {
            if (string.IsNullOrEmpty(StopStrings[i]))
                throw new ArgumentException($"StopStrings[{i}] is empty; remove it or give a non-empty string.");
        }
        return this;
    }
}
