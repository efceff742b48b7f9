namespace Rlhf.Inference.Tokenization;

/// <summary>
/// How a (prompt, response) pair becomes tokens, the same way in every stage:
/// <c>[BOS] Encode(prompt)</c> | <c>Encode(sep + response) [EOS]</c>, where sep is one space unless the prompt
/// already ends with, or the response starts with, whitespace. Responses are encoded on their own so a stage can
/// mask the prompt part exactly.
/// </summary>
public static class PromptFormat
{
    /// <summary>The response text as it follows the prompt (with its leading separator).</summary>
    public static string Continuation(string prompt, string response) =>
        prompt.Length == 0 || response.Length == 0 || char.IsWhiteSpace(prompt[^1]) || char.IsWhiteSpace(response[0])
            ? response
            : " " + response;

    /// <summary>Prompt tokens: BOS (when the tokenizer has one) then the prompt.</summary>
    public static int[] PromptIds(TextTokenizer tokenizer, string prompt)
    {
        int[] ids = tokenizer.Encode(prompt);
        return tokenizer.BosId is int bos ? [bos, .. ids] : ids;
    }

    /// <summary>Response tokens: the continuation then EOS (when the tokenizer has one).</summary>
    public static int[] ResponseIds(TextTokenizer tokenizer, string prompt, string response)
    {
        int[] ids = tokenizer.Encode(Continuation(prompt, response));
        return tokenizer.EosId is int eos ? [.. ids, eos] : ids;
    }

    /// <summary>Response text from generated ids: special tokens dropped, the leading separator trimmed.</summary>
    public static string ResponseText(TextTokenizer tokenizer, IEnumerable<int> responseIds) =>
        tokenizer.Decode(responseIds, skipSpecial: true).TrimStart();
}
