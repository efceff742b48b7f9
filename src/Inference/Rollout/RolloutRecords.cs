namespace Rlhf.Inference.Rollout;

/// <summary>
/// One generation request: a prompt given as token ids (used as is) or as text (encoded with
/// <see cref="Tokenization.PromptFormat.PromptIds"/>, i.e. BOS + prompt), and how to sample its response.
/// </summary>
/// <param name="PromptIds">Prompt token ids (non-empty); wins over <paramref name="PromptText"/>.</param>
/// <param name="PromptText">Prompt text; needs an engine with a tokenizer.</param>
/// <param name="Sampling">Sampling settings; null = <see cref="SamplingOptions"/> defaults.</param>
public sealed record RolloutRequest(IReadOnlyList<int>? PromptIds = null, string? PromptText = null, SamplingOptions? Sampling = null)
{
    /// <summary>A request for prompt token ids.</summary>
    public static RolloutRequest FromIds(IReadOnlyList<int> ids, SamplingOptions? sampling = null) => new(ids, null, sampling);

    /// <summary>A request for a text prompt.</summary>
    public static RolloutRequest FromText(string text, SamplingOptions? sampling = null) => new(null, text, sampling);
}

/// <summary>Why a response ended.</summary>
public enum RolloutFinishReason
{
    /// <summary>An EOS token was generated (it is the last response token).</summary>
    Eos,
    /// <summary><see cref="SamplingOptions.MaxNewTokens"/> tokens were generated.</summary>
    Length,
    /// <summary>The decoded response reached a stop string (the text is cut before it; the ids keep the token that completed it).</summary>
    StopString,
}

/// <summary>Timings of the batch a result was generated in (shared by all rows of that batch).</summary>
/// <param name="PrefillMs">Prompt forward pass (all rows at once).</param>
/// <param name="DecodeMs">All one-token steps, sampling included.</param>
/// <param name="BatchSize">Rows in the batch.</param>
/// <param name="GeneratedTokens">Response tokens of all rows of the batch.</param>
public sealed record RolloutTimings(double PrefillMs, double DecodeMs, int BatchSize, int GeneratedTokens)
{
    /// <summary>Generated tokens per second of wall time (prefill + decode) for the whole batch.</summary>
    public double TokensPerSecond => GeneratedTokens / Math.Max((PrefillMs + DecodeMs) / 1000.0, 1e-9);
}

/// <summary>
/// One generated response. <see cref="LogProbs"/> // [A]: log softmax(logits / T)[token] of each response token under
/// the full distribution at the sampling temperature (before top-k/top-p; T = 1 for greedy), as
/// <see cref="TokenSampler"/> defines it. <see cref="WeightsVersion"/> is the version of the weights that generated it.
/// <see cref="TopLogProbs"/> // [A][k]: with <see cref="SamplingOptions.TopLogProbs"/> = k, the k most likely tokens of
/// that distribution at each step (null when not asked for, or from an engine that does not record them).
/// </summary>
public sealed record RolloutResult(
    int[] PromptIds,
    int[] ResponseIds,
    string? Text,
    float[] LogProbs,
    RolloutFinishReason FinishReason,
    RolloutTimings Timings,
    ulong WeightsVersion = 0,
    TokenLogProb[][]? TopLogProbs = null);

/// <summary>A token and its log-probability.</summary>
public readonly record struct TokenLogProb(int Token, float LogProb);

/// <summary>
/// One token as an engine samples it (<see cref="Services.RolloutCall.OnToken"/>): the request's index in the call,
/// the token, its logprob (as <see cref="RolloutResult.LogProbs"/>) and, when asked for, the step's most likely tokens.
/// </summary>
public readonly record struct SampledToken(int Request, int Token, float LogProb, TokenLogProb[]? Top);
