using Rlhf.Inference.Tokenization;

namespace Rlhf.Training.Data;

/// <summary>
/// A conversation as training tokens: <see cref="Ids"/> the token ids of the rendered conversation, <see cref="Loss"/>
/// (same length) true on the tokens the SFT loss covers: every learned assistant turn's content and its end-of-turn
/// token, nothing else (no system, user or tool tokens, no template text before the content, nothing after the
/// end-of-turn token such as a trailing newline).
/// </summary>
public sealed record ConversationTokens(int[] Ids, bool[] Loss)
{
    /// <summary>
    /// Renders <paramref name="messages"/> with <paramref name="render"/> (a chat template: messages and
    /// addGenerationPrompt → text) and encodes it with the loss mask above.
    /// <para>Method: the text before assistant turn i is render(messages[..i], addGenerationPrompt: true), the text
    /// through it render(messages[..(i+1)], false); each rendering must extend the previous one (a template that rewrites
    /// earlier turns, e.g. one that drops past reasoning, is not prefix-stable and fails). The text is cut into these
    /// pieces and each piece is encoded on its own with <paramref name="encode"/> (no BOS added; a template that writes
    /// BOS text writes it in the first piece). Encoding the pieces, rather than mapping character offsets of one encoding
    /// back to tokens, needs nothing from the tokenizer but ids, and no token can straddle a mask boundary; the cuts fall
    /// at template markup (the generation prompt's end, the end of a turn), where a BPE tokenizer splits anyway, so the ids
    /// are the whole text's encoding for the usual templates and a valid encoding of it always.</para>
    /// <para>In a turn's piece the loss covers the tokens up to and including the last id in
    /// <paramref name="endOfTurnIds"/> (e.g. &lt;|im_end|&gt;, &lt;|eot_id|&gt;, EOS); a turn without one fails, since the model
    /// would never learn to stop.</para>
    /// </summary>
    /// <param name="messages">The conversation; assistant turns from <paramref name="promptTurns"/> on are learned.</param>
    /// <param name="render">The chat template (messages, addGenerationPrompt) → text.</param>
    /// <param name="encode">Text → token ids, without BOS/EOS added.</param>
    /// <param name="endOfTurnIds">Ids that end an assistant turn.</param>
    /// <param name="promptTurns">Leading messages that are context only (<see cref="SftExample.PromptTurns"/>).</param>
    public static ConversationTokens FromMessages(
        IReadOnlyList<ChatMessage> messages,
        Func<IReadOnlyList<ChatMessage>, bool, string> render,
        Func<string, int[]> encode,
        IReadOnlySet<int> endOfTurnIds,
        int promptTurns = 0)
    {
        ArgumentNullException.ThrowIfNull(messages);
        ArgumentNullException.ThrowIfNull(render);
        ArgumentNullException.ThrowIfNull(encode);
        ArgumentNullException.ThrowIfNull(endOfTurnIds);
        if (!messages.Skip(promptTurns).Any(m => m.Role == "assistant"))
            throw new ArgumentException($"the conversation has no assistant turn at or after message {promptTurns}; there is nothing to learn", nameof(messages));
        ChatMessage[] all = [.. messages];
        var ids = new List<int>();
        var loss = new List<bool>();
        string done = "";
        for (int i = promptTurns; i < all.Length; i++)
        {
            if (all[i].Role != "assistant") continue;
            string before = Extend(done, render(all[..i], true), i, "the text before it (with the generation prompt)");
            ids.AddRange(encode(before[done.Length..]));
            loss.AddRange(new bool[ids.Count - loss.Count]);
            string through = Extend(before, render(all[..(i + 1)], false), i, "the text through it");
            int[] turn = encode(through[before.Length..]);
            int end = Array.FindLastIndex(turn, endOfTurnIds.Contains);
            if (end < 0)
                throw new ArgumentException($"assistant turn {i + 1} encodes to no end-of-turn token ({string.Join(", ", endOfTurnIds)}); "
                    + "give the ids of the template's end-of-turn token (and EOS) so the model learns to stop", nameof(endOfTurnIds));
            ids.AddRange(turn);
            loss.AddRange(turn.Select((_, k) => k <= end));
            done = through;
        }
        string whole = Extend(done, render(all, false), all.Length - 1, "the whole conversation");
        ids.AddRange(encode(whole[done.Length..]));
        loss.AddRange(new bool[ids.Count - loss.Count]);
        return new ConversationTokens([.. ids], [.. loss]);
    }

    /// <summary>A rollout prompt's ids: render(<paramref name="prompt"/>, addGenerationPrompt: true), encoded (no BOS
    /// added; a template that writes BOS text has it).</summary>
    public static int[] PromptIds(
        IReadOnlyList<ChatMessage> prompt, Func<IReadOnlyList<ChatMessage>, bool, string> render, Func<string, int[]> encode)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        if (prompt.Count == 0) throw new ArgumentException("a prompt needs at least one message", nameof(prompt));
        return encode(render(prompt, true));
    }

    /// <summary><paramref name="next"/> when it starts with <paramref name="previous"/>; otherwise the template is not
    /// prefix-stable and the spans of the turns cannot be cut out of one text.</summary>
    static string Extend(string previous, string next, int turn, string what)
    {
        if (next.StartsWith(previous, StringComparison.Ordinal)) return next;
        int at = 0;
        while (at < previous.Length && at < next.Length && previous[at] == next[at]) at++;
        throw new ArgumentException(
            $"the chat template is not prefix-stable: at message {turn + 1}, {what} does not begin with the text rendered before it "
            + $"(they differ at character {at}: '{Snippet(previous, at)}' became '{Snippet(next, at)}'); a template that rewrites "
            + "earlier turns (e.g. drops past reasoning or moves the system prompt) cannot mark the assistant turns for training; "
            + "use a template that renders each turn the same whatever follows it");
    }

    static string Snippet(string s, int at) => s.Length <= at ? "" : s.Substring(at, Math.Min(24, s.Length - at)).ReplaceLineEndings("\\n");
}
