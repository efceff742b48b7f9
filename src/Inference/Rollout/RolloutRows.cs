using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Rollout;

/// <summary>The per-request pieces both rollout engines share: request checks, stop-string checks, response text.</summary>
internal static class RolloutRows
{
    /// <summary>
    /// Prompt ids and validated sampling options of each request: ids as given, or BOS + text through
    /// <paramref name="tokenizer"/> (<paramref name="noTokenizer"/> is the error when there is none). Throws
    /// <see cref="ArgumentException"/> naming the request for an empty prompt, an id outside the vocabulary, a prompt
    /// and <c>max_new_tokens</c> longer than <paramref name="contextLength"/> (the folder's context_length; null: no
    /// limit known), or stop strings without a tokenizer to decode with.
    /// </summary>
    public static (int[][] Prompts, SamplingOptions[] Sampling) Prepare(IReadOnlyList<RolloutRequest> requests, TextTokenizer? tokenizer,
        int vocabSize, int? contextLength, string noTokenizer)
    {
        ArgumentNullException.ThrowIfNull(requests);
        var prompts = new int[requests.Count][];
        var sampling = new SamplingOptions[requests.Count];
        for (int i = 0; i < requests.Count; i++)
        {
            var r = requests[i];
            sampling[i] = (r.Sampling ?? new SamplingOptions()).Validate();
            if (r.PromptIds is { } ids) prompts[i] = [.. ids];
            else if (r.PromptText is { } text) prompts[i] = PromptFormat.PromptIds(tokenizer ?? throw new ArgumentException(noTokenizer), text);
            else throw new ArgumentException($"Request {i} has neither PromptIds nor PromptText.");
            if (prompts[i].Length == 0) throw new ArgumentException($"Request {i} has an empty prompt (give at least a BOS token).");
            foreach (int t in prompts[i])
                if ((uint)t >= (uint)vocabSize) throw new ArgumentException($"Request {i}: token id {t} is outside the vocabulary (size {vocabSize}).");
            if (contextLength is int c && prompts[i].Length + sampling[i].MaxNewTokens > c)
                throw new ArgumentException($"Request {i}: a prompt of {prompts[i].Length} tokens and max_new_tokens {sampling[i].MaxNewTokens} exceed the model's " +
                                            $"context of {c} tokens (genai_config.json context_length); shorten the prompt or ask for fewer tokens.");
            if (sampling[i].StopStrings.Count > 0 && tokenizer is null)
                throw new ArgumentException($"Request {i} has stop strings but the engine has no tokenizer to decode responses.");
        }
        return (prompts, sampling);
    }

    /// <summary>
    /// Decodes <paramref name="response"/> and looks for a stop string in the text added since the last check
    /// (<paramref name="textLen"/>, updated); on a hit <paramref name="stopAt"/> is where the text is cut.
    /// </summary>
    public static bool CheckStop(TextTokenizer tokenizer, StopStringMatcher m, ReadOnlySpan<int> response, ref int textLen, ref int stopAt)
    {
        string text = tokenizer.Decode(response.ToArray(), skipSpecial: true);
        int at = m.FindNew(text, Math.Min(textLen, text.Length));
        textLen = text.Length;
        if (at < 0) return false;
        stopAt = at;
        return true;
    }

    /// <summary>The response text: cut before the stop string when one ended the row, else <see cref="PromptFormat.ResponseText"/>; null without a tokenizer.</summary>
    public static string? Text(TextTokenizer? tokenizer, int[] response, RolloutFinishReason? reason, int stopAt) =>
        tokenizer is null ? null
        : reason == RolloutFinishReason.StopString ? tokenizer.Decode(response, skipSpecial: true)[..stopAt].TrimStart()
        : PromptFormat.ResponseText(tokenizer, response);
}
