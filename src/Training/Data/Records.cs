using Rlhf.Inference.Tokenization;
namespace Rlhf.Training.Data;

/// <summary>A record that is either flat text or a conversation (TRL's "conversational" datasets: lists of
/// <c>{role, content}</c> messages). A conversational record keeps its messages; its string properties are a plain-text
/// view (<see cref="ChatText.Plain"/>) for logs, and training must render the messages with the model's chat template.</summary>
public interface IConversationalRecord
{
    /// <summary>Whether the row was a list of messages (render it with a chat template) rather than plain text.</summary>
    bool IsConversational { get; }
}

/// <summary>One supervised fine-tuning demonstration: the model sees <see cref="Prompt"/> and learns to
/// produce <see cref="Response"/>. The full text is <see cref="PromptFormat.Join"/>(Prompt, Response).
/// A conversational demonstration (<see cref="FromConversation"/>) holds the whole conversation in
/// <see cref="Messages"/>; the loss covers its assistant turns from message <see cref="PromptTurns"/> on.</summary>
public sealed record SftExample(string Prompt, string Response) : IConversationalRecord
{
    SftExample(IReadOnlyList<ChatMessage> messages, int promptTurns)
        : this(ChatText.Plain(messages.Take(ChatText.LastAssistant(messages))), messages[ChatText.LastAssistant(messages)].Content)
    {
        Messages = messages;
        PromptTurns = promptTurns;
    }

    /// <summary>A conversational demonstration. <paramref name="promptTurns"/> = how many leading messages are context only:
    /// 0 for a <c>messages</c> row (every assistant turn is learned), the prompt's length for a conversational
    /// prompt/completion row (only the completion is learned, as TRL's completion-only loss). The conversation must
    /// have an assistant turn at or after <paramref name="promptTurns"/>; the readers check rows (<see cref="DataFiles.ReadSft"/>).</summary>
    public static SftExample FromConversation(IReadOnlyList<ChatMessage> messages, int promptTurns = 0)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (promptTurns < 0 || !messages.Skip(promptTurns).Any(m => m.Role == "assistant"))
            throw new ArgumentException($"a conversational SFT example needs an assistant turn at or after message {promptTurns}", nameof(messages));
        return new SftExample(messages.ToArray(), promptTurns);
    }

    /// <summary>The whole conversation of a conversational row; null for a flat prompt/response row.</summary>
    public IReadOnlyList<ChatMessage>? Messages { get; }

    /// <summary>Leading messages that are context only (no loss); 0 for flat rows.</summary>
    public int PromptTurns { get; }

    public bool IsConversational => Messages is not null;

    public bool Equals(SftExample? other) =>
        other is not null && Prompt == other.Prompt && Response == other.Response && PromptTurns == other.PromptTurns
        && ChatText.SameMessages(Messages, other.Messages);

    public override int GetHashCode() => HashCode.Combine(Prompt, Response, PromptTurns, Messages?.Count);
}

/// <summary>One human (or simulated) preference: for <see cref="Prompt"/>, <see cref="Chosen"/> was ranked above
/// <see cref="Rejected"/>. The reward model loss is −log σ(r(x, y_chosen) − r(x, y_rejected)).
/// A conversational pair (<see cref="FromConversation"/>) holds the prompt's messages and each response's assistant
/// message(s).</summary>
public sealed record PreferencePair(string Prompt, string Chosen, string Rejected) : IConversationalRecord
{
    PreferencePair(IReadOnlyList<ChatMessage> prompt, IReadOnlyList<ChatMessage> chosen, IReadOnlyList<ChatMessage> rejected)
        : this(ChatText.Plain(prompt), ChatText.Plain(chosen), ChatText.Plain(rejected))
    {
        PromptMessages = prompt;
        ChosenMessages = chosen;
        RejectedMessages = rejected;
    }

    /// <summary>A conversational pair: the conversation so far, and the chosen and rejected continuations (each ending
    /// in an assistant turn).</summary>
    public static PreferencePair FromConversation(
        IReadOnlyList<ChatMessage> prompt, IReadOnlyList<ChatMessage> chosen, IReadOnlyList<ChatMessage> rejected)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(chosen);
        ArgumentNullException.ThrowIfNull(rejected);
        if (prompt.Count == 0) throw new ArgumentException("a conversational pair needs a prompt message", nameof(prompt));
        if (chosen.Count == 0 || chosen[^1].Role != "assistant" || rejected.Count == 0 || rejected[^1].Role != "assistant")
            throw new ArgumentException("chosen and rejected must each end in an assistant turn");
        return new PreferencePair(prompt.ToArray(), chosen.ToArray(), rejected.ToArray());
    }

    /// <summary>The conversation before the responses; null for a flat row.</summary>
    public IReadOnlyList<ChatMessage>? PromptMessages { get; }

    /// <summary>The preferred continuation (assistant turn(s)); null for a flat row.</summary>
    public IReadOnlyList<ChatMessage>? ChosenMessages { get; }

    /// <summary>The dispreferred continuation (assistant turn(s)); null for a flat row.</summary>
    public IReadOnlyList<ChatMessage>? RejectedMessages { get; }

    public bool IsConversational => PromptMessages is not null;

    public bool Equals(PreferencePair? other) =>
        other is not null && Prompt == other.Prompt && Chosen == other.Chosen && Rejected == other.Rejected
        && ChatText.SameMessages(PromptMessages, other.PromptMessages)
        && ChatText.SameMessages(ChosenMessages, other.ChosenMessages)
        && ChatText.SameMessages(RejectedMessages, other.RejectedMessages);

    public override int GetHashCode() => HashCode.Combine(Prompt, Chosen, Rejected, PromptMessages?.Count);
}

/// <summary>A prompt for reward-model sampling or PPO rollouts: plain text, or (<see cref="FromConversation"/>) the
/// conversation the model answers next.</summary>
public sealed record PromptExample(string Prompt) : IConversationalRecord
{
    PromptExample(IReadOnlyList<ChatMessage> messages) : this(ChatText.Plain(messages)) => Messages = messages;

    /// <summary>A conversational prompt: the conversation so far (not ending in an assistant turn).</summary>
    public static PromptExample FromConversation(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0) throw new ArgumentException("a conversational prompt needs at least one message", nameof(messages));
        return new PromptExample(messages.ToArray());
    }

    /// <summary>The conversation of a conversational row; null for a flat row.</summary>
    public IReadOnlyList<ChatMessage>? Messages { get; }

    public bool IsConversational => Messages is not null;

    public bool Equals(PromptExample? other) =>
        other is not null && Prompt == other.Prompt && ChatText.SameMessages(Messages, other.Messages);

    public override int GetHashCode() => HashCode.Combine(Prompt, Messages?.Count);
}

/// <summary>A pretraining document (PPO-ptx): plain text, trained on in full.</summary>
public sealed record TextExample(string Text);

/// <summary>K responses to one prompt with their ranking, as InstructGPT labellers produced them.
/// <c>Ranking[i]</c> is the rank of <c>Responses[i]</c>: 0 is the best, K−1 the worst; the ranking must be a
/// permutation of 0..K−1 (no ties). Expand to all C(K, 2) pairs with <see cref="ToPairs"/>.</summary>
public sealed record RankedExample
{
    public RankedExample(string prompt, IReadOnlyList<string> responses, IReadOnlyList<int> ranking)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(responses);
        ArgumentNullException.ThrowIfNull(ranking);
        string? error = Validate(responses, ranking);
        if (error is not null) throw new ArgumentException(error, nameof(ranking));
        Prompt = prompt;
        Responses = responses.ToArray();
        Ranking = ranking.ToArray();
    }

    public string Prompt { get; }

    /// <summary>The K responses, K ≥ 2.</summary>
    public IReadOnlyList<string> Responses { get; }

    /// <summary>Ranking[i] = rank of Responses[i], 0 = best.</summary>
    public IReadOnlyList<int> Ranking { get; }

    public int K => Responses.Count;

    /// <summary>Why (responses, ranking) is not a valid ranked example, or null when it is.</summary>
    public static string? Validate(IReadOnlyList<string> responses, IReadOnlyList<int> ranking)
    {
        if (responses.Count < 2)
            return $"a ranked example needs at least 2 responses, got {responses.Count}";
        if (ranking.Count != responses.Count)
            return $"ranking has {ranking.Count} entries but there are {responses.Count} responses; give one rank per response";
        var seen = new bool[ranking.Count];
        foreach (int r in ranking)
        {
            if (r < 0 || r >= ranking.Count || seen[r])
                return $"ranking [{string.Join(", ", ranking)}] is not a permutation of 0..{ranking.Count - 1} "
                    + "(rank 0 = best, each rank used once)";
            seen[r] = true;
        }
        return null;
    }

    /// <summary>All C(K, 2) preference pairs of this prompt, better response as Chosen. Ordered by the rank of the
    /// chosen response, then of the rejected one, so the result does not depend on the order of Responses.</summary>
    public IReadOnlyList<PreferencePair> ToPairs()
    {
        int k = K;
        var byRank = new string[k];
        for (int i = 0; i < k; i++) byRank[Ranking[i]] = Responses[i];
        var pairs = new List<PreferencePair>(k * (k - 1) / 2);
        for (int w = 0; w < k; w++)
            for (int l = w + 1; l < k; l++)
                pairs.Add(new PreferencePair(Prompt, byRank[w], byRank[l]));
        return pairs;
    }

    /// <summary>Responses sorted best first.</summary>
    public IReadOnlyList<string> ResponsesBestFirst()
    {
        var byRank = new string[K];
        for (int i = 0; i < K; i++) byRank[Ranking[i]] = Responses[i];
        return byRank;
    }

    public bool Equals(RankedExample? other) =>
        other is not null && Prompt == other.Prompt
        && Responses.SequenceEqual(other.Responses) && Ranking.SequenceEqual(other.Ranking);

    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(Prompt);
        foreach (string r in Responses) h.Add(r);
        foreach (int r in Ranking) h.Add(r);
        return h.ToHashCode();
    }
}
