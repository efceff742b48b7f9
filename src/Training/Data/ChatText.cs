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
    /// The chat template that turns <paramref name="records"/> into text: null when none is conversational (flat rows
    /// keep <see cref="PromptFormat"/>), else <paramref name="modelFolder"/>'s template (tokenizer_config.json
    /// <c>chat_template</c> or chat_template.jinja), the one the model is served with. A conversational file for a
    /// model without a template fails here, naming both.
    /// </summary>
    public static ChatTemplate? TemplateFor(IEnumerable<IConversationalRecord> records, string modelFolder, string dataFile)
    {
        ArgumentNullException.ThrowIfNull(records);
        if (!records.Any(r => r.IsConversational)) return null;
        try
        {
            return ChatTemplate.TryLoad(modelFolder) ?? throw new InvalidDataException(
                $"{dataFile}: its rows are conversations (lists of {{role, content}} messages), which become text through the model's "
                + $"chat template, and {modelFolder} has none; add 'chat_template' to its tokenizer_config.json or a chat_template.jinja "
                + "file, or give flat text rows.");
        }
        catch (ChatTemplateException e) { throw new InvalidDataException($"{dataFile}: {e.Message}"); }
    }

    /// <summary>
    /// A rollout prompt as text: a flat prompt as it is; a conversation rendered by <paramref name="chat"/> with the
    /// generation prompt (<c>add_generation_prompt=True</c>), so the policy continues as the assistant. The tokens are
    /// then <see cref="PromptFormat.PromptIds"/> of it (a template that writes BOS gets no second one).
    /// </summary>
    public static string PromptText(PromptExample prompt, ChatTemplate? chat)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        return prompt.Messages is null ? prompt.Prompt
            : (chat ?? throw new InvalidOperationException("a conversational prompt needs a chat template")).Render(prompt.Messages, addGenerationPrompt: true);
    }

    /// <summary>
    /// A preference pair as the text the reward model (and DPO) reads: a flat pair as it is; a conversational one as the
    /// rendered prompt with the generation prompt (<see cref="PromptText"/>) and each response's assistant content, so
    /// <see cref="PromptFormat.JoinedIds"/> gives the conversation the chat model produced: rendered prompt, assistant
    /// text, end-of-turn. Each continuation must be one assistant message.
    /// </summary>
    public static PreferencePair Rendered(PreferencePair pair, ChatTemplate? chat, string dataFile)
    {
        ArgumentNullException.ThrowIfNull(pair);
        if (pair.PromptMessages is null) return pair;
        if (chat is null) throw new InvalidOperationException("a conversational pair needs a chat template");
        string One(IReadOnlyList<ChatMessage> continuation, string which) => continuation is [{ Role: "assistant" } m] ? m.Content
            : throw new InvalidDataException($"{dataFile}: a {which} continuation of {continuation.Count} messages; give one assistant message per response.");
        return new PreferencePair(chat.Render(pair.PromptMessages, addGenerationPrompt: true),
            One(pair.ChosenMessages!, "chosen"), One(pair.RejectedMessages!, "rejected"));
    }
}
