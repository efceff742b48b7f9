using Rlhf.Inference.Tokenization;

namespace Rlhf.Training.Data;

/// <summary>Plain-text views and checks of conversations (lists of <see cref="ChatMessage"/>).</summary>
public static class ChatText
{
    /// <summary>The messages' contents joined by a blank line: the plain-text view a conversational record's string
    /// properties hold (for logs and listings; training renders the messages with a chat template instead).</summary>
    public static string Plain(IEnumerable<ChatMessage> messages) => string.Join("\n\n", messages.Select(m => m.Content));

    /// <summary>Index of the last assistant message, or −1.</summary>
    public static int LastAssistant(IReadOnlyList<ChatMessage> messages)
    {
        for (int i = messages.Count - 1; i >= 0; i--)
            if (messages[i].Role == "assistant") return i;
        return -1;
    }

    /// <summary>Both null, or the same messages in the same order.</summary>
    public static bool SameMessages(IReadOnlyList<ChatMessage>? a, IReadOnlyList<ChatMessage>? b) =>
        a is null ? b is null : b is not null && a.SequenceEqual(b);

    /// <summary>
    /// The records of <paramref name="read"/> when none is conversational. The stages do not render chat templates
    /// yet, so a conversational data file fails at load here, the one place that check lives.
    /// </summary>
    public static DataRead<T> RequireFlat<T>(DataRead<T> read, string path) where T : IConversationalRecord
    {
        ArgumentNullException.ThrowIfNull(read);
        if (read.Records.Any(r => r.IsConversational))
            throw new InvalidDataException($"{path}: its rows are conversations (lists of {{role, content}} messages), which need the "
                + "model's chat template to become tokens, and this stage does not apply a chat template yet; give flat text rows "
                + "instead (prompt,response / prompt,chosen,rejected / prompt as strings).");
        return read;
    }
}
