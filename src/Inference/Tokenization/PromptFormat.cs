namespace Rlhf.Inference.Tokenization;

/// <summary>
/// How a (prompt, response) pair becomes text and tokens, the same way in every stage. Responses are stored without a
/// leading space; the text is the prompt, one space, then the response (no space when the response starts with
/// punctuation or the prompt ends with whitespace). Tokens: <c>[BOS] Encode(prompt)</c> | <c>Encode(continuation) [EOS]</c>;
/// the response is encoded on its own so a stage can mask the prompt part exactly. BOS is the folder's own
/// (<see cref="TextTokenizer.AddedBosId"/>), first and once: a rendered chat prompt that begins with it gets no second.
/// </summary>
public static class PromptFormat
{
    /// <summary>The response text as it follows the prompt (with its leading separator, if any).</summary>
    public static string Continuation(string prompt, string response)
    {
        string r = response.TrimStart();
        if (prompt.Length == 0 || r.Length == 0 || char.IsWhiteSpace(prompt[^1])) return r;
        return r[0] is '.' or ',' or '!' or '?' or ';' or ':' ? r : " " + r;
    }

    /// <summary>The full text: the prompt followed by its continuation — the text of <see cref="JoinedIds"/> (a rendered chat
    /// prompt keeps the newline its generation prompt ends with; "the food was " + "great" is "the food was great").</summary>
    public static string Join(string prompt, string response) => prompt + Continuation(prompt, response);

    /// <summary>
    /// Prompt tokens: BOS (when the folder's tokenizer adds one, <see cref="TextTokenizer.AddedBosId"/>) then the prompt. A
    /// prompt whose text already begins with BOS — a rendered chat template that writes <c>bos_token</c>, as Llama 3's and
    /// Mistral's do — gets no second one.
    /// </summary>
    public static int[] PromptIds(TextTokenizer tokenizer, string prompt)
    {
        int[] ids = tokenizer.Encode(prompt);
        return tokenizer.AddedBosId is int bos && (ids.Length == 0 || ids[0] != bos) ? [bos, .. ids] : ids;
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

    /// <summary>
    /// Tokens of a (prompt, response) pair as a sequence scorer reads them: <c>[BOS] prompt continuation [EOS]</c>, the
    /// same ids as <see cref="PromptIds"/> followed by <see cref="ResponseIds"/> (BOS/EOS when <paramref name="addSpecial"/>
    /// and the tokenizer adds/has them; a prompt that begins with BOS keeps that one), at most <paramref name="maxLength"/>
    /// tokens: the prompt loses tokens from its start first, then the response from its end; BOS and EOS stay.
    /// </summary>
    public static int[] JoinedIds(TextTokenizer tokenizer, string prompt, string response, int maxLength, bool addSpecial = true)
    {
        int[] p = tokenizer.Encode(prompt);
        int[] r = tokenizer.Encode(Continuation(prompt, response));
        int? bos = addSpecial ? tokenizer.AddedBosId : null, eos = addSpecial ? tokenizer.EosId : null;
        if (bos is int b0 && p.Length > 0 && p[0] == b0) p = p[1..];   // the template's BOS is the one BOS
        int special = (bos is null ? 0 : 1) + (eos is null ? 0 : 1);
        int over = p.Length + r.Length + special - maxLength;
        if (over > 0) { int cut = Math.Min(over, p.Length); p = p[cut..]; over -= cut; }
        if (over > 0) r = r[..Math.Max(0, r.Length - over)];
        return [.. bos is int b ? [b] : Array.Empty<int>(), .. p, .. r, .. eos is int e ? [e] : Array.Empty<int>()];
    }
}
