using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Training.Data;

/// <summary>The row shapes a data file may have: this project's flat ones and TRL's dataset formats ("standard" rows
/// hold strings, "conversational" rows lists of <c>{role, content}</c> messages). The first row of a file decides; every
/// other row must have the same shape.</summary>
public enum RowShape
{
    /// <summary>SFT <c>{"prompt": "...", "response": "..."}</c> (this project's flat format).</summary>
    PromptResponse,
    /// <summary>SFT, TRL standard prompt-completion <c>{"prompt": "...", "completion": "..."}</c>.</summary>
    PromptCompletion,
    /// <summary>SFT, TRL conversational prompt-completion: prompt and completion lists of messages.</summary>
    ConversationalPromptCompletion,
    /// <summary>SFT, TRL conversational language modeling <c>{"messages": [...]}</c>.</summary>
    Messages,
    /// <summary>Preferences <c>{"prompt": "...", "chosen": "...", "rejected": "..."}</c>.</summary>
    Preference,
    /// <summary>Preferences, conversational: prompt a list of messages, chosen/rejected lists of assistant messages.</summary>
    ConversationalPreference,
    /// <summary>Preferences with an implicit prompt: chosen/rejected whole conversations sharing a prefix (the prompt).</summary>
    ImplicitPromptPreference,
    /// <summary>Prompt-only <c>{"prompt": "..."}</c>.</summary>
    Prompt,
    /// <summary>Prompt-only, conversational: prompt a list of messages.</summary>
    ConversationalPrompt,
}

/// <summary>The record kinds whose rows may come in several shapes.</summary>
internal enum RecordKind { Sft, Preference, Prompt }

/// <summary>
/// Detects a row's <see cref="RowShape"/> from the fields present and turns rows of a shape into records, with one
/// message per problem (the reader adds <c>file:line</c>). Rows are JSON objects under our field names (the reader maps
/// the file's columns with <see cref="DatasetColumns"/>); a Parquet row arrives as the same JSON.
/// </summary>
internal static class RowShapes
{
    /// <summary>The shapes accepted for each record kind, as examples for error messages.</summary>
    public static string Accepted(RecordKind kind) => kind switch
    {
        RecordKind.Sft => "{\"prompt\": \"...\", \"response\": \"...\"}, {\"prompt\": \"...\", \"completion\": \"...\"}, "
            + "{\"prompt\": [messages], \"completion\": [assistant messages]} or {\"messages\": [messages]}",
        RecordKind.Preference => "{\"prompt\": \"...\", \"chosen\": \"...\", \"rejected\": \"...\"}, "
            + "{\"prompt\": [messages], \"chosen\": [assistant messages], \"rejected\": [assistant messages]} or "
            + "{\"chosen\": [messages], \"rejected\": [messages]} (whole conversations sharing the prompt)",
        RecordKind.Prompt => "{\"prompt\": \"...\"} or {\"prompt\": [messages]}",
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>One row's shape from the fields present (and whether the prompt is a string or a list), or why none fits.</summary>
    public static (RowShape? Shape, string? Problem) Detect(RecordKind kind, JsonObject row)
    {
        bool Has(string f) => row.ContainsKey(f);
        bool IsList(string f) => row[f] is JsonArray;
        RowShape? shape = kind switch
        {
            RecordKind.Sft when Has("messages") => RowShape.Messages,
            RecordKind.Sft when Has("prompt") && Has("completion") =>
                IsList("prompt") || IsList("completion") ? RowShape.ConversationalPromptCompletion : RowShape.PromptCompletion,
            RecordKind.Sft when Has("prompt") && Has("response") => RowShape.PromptResponse,
            RecordKind.Preference when Has("chosen") && Has("rejected") => !Has("prompt") ? RowShape.ImplicitPromptPreference
                : IsList("prompt") || IsList("chosen") || IsList("rejected") ? RowShape.ConversationalPreference : RowShape.Preference,
            RecordKind.Prompt when Has("prompt") => IsList("prompt") ? RowShape.ConversationalPrompt : RowShape.Prompt,
            _ => null,
        };
        if (shape is not null) return (shape, null);
        string found = row.Count == 0 ? "no fields" : "fields " + string.Join(", ", row.Select(p => $"'{p.Key}'"));
        return (null, $"found {found}, which match no accepted row shape: {Accepted(kind)}; "
            + "if your columns are named otherwise, map them with the config key dataset_columns (e.g. {\"prompt\": \"question\"})");
    }

    /// <summary>The example of a shape, for messages.</summary>
    public static string Example(RowShape shape) => shape switch
    {
        RowShape.PromptResponse => "{\"prompt\": \"...\", \"response\": \"...\"}",
        RowShape.PromptCompletion => "{\"prompt\": \"...\", \"completion\": \"...\"}",
        RowShape.ConversationalPromptCompletion => "{\"prompt\": [messages], \"completion\": [assistant messages]}",
        RowShape.Messages => "{\"messages\": [{\"role\": \"user\", \"content\": \"...\"}, {\"role\": \"assistant\", \"content\": \"...\"}]}",
        RowShape.Preference => "{\"prompt\": \"...\", \"chosen\": \"...\", \"rejected\": \"...\"}",
        RowShape.ConversationalPreference => "{\"prompt\": [messages], \"chosen\": [assistant messages], \"rejected\": [assistant messages]}",
        RowShape.ImplicitPromptPreference => "{\"chosen\": [messages], \"rejected\": [messages]}",
        RowShape.Prompt => "{\"prompt\": \"...\"}",
        RowShape.ConversationalPrompt => "{\"prompt\": [messages]}",
        _ => throw new ArgumentOutOfRangeException(nameof(shape)),
    };

    /// <summary>Why a later row does not have the file's shape (another accepted shape, a missing field), or null when
    /// it may be parsed as <paramref name="shape"/>.</summary>
    public static string? ShapeMismatch(RecordKind kind, RowShape shape, JsonObject row)
    {
        var (own, _) = Detect(kind, row);
        if (own is { } other && other != shape)
            return $"this row has the shape {Example(other)} but the file's first row has the shape {Example(shape)}; "
                + "every row of a file must have the same shape";
        foreach (string field in Fields(shape))
            if (!row.ContainsKey(field))
                return $"missing field '{field}'; every row must have the file's shape, like {Example(shape)}";
        return null;
    }

    /// <summary>The fields a shape reads.</summary>
    static string[] Fields(RowShape shape) => shape switch
    {
        RowShape.PromptResponse => ["prompt", "response"],
        RowShape.PromptCompletion or RowShape.ConversationalPromptCompletion => ["prompt", "completion"],
        RowShape.Messages => ["messages"],
        RowShape.Preference or RowShape.ConversationalPreference => ["prompt", "chosen", "rejected"],
        RowShape.ImplicitPromptPreference => ["chosen", "rejected"],
        RowShape.Prompt or RowShape.ConversationalPrompt => ["prompt"],
        _ => throw new ArgumentOutOfRangeException(nameof(shape)),
    };

    /// <summary>Whether the shape's rows hold strings (read as the flat schema's cells) rather than messages.</summary>
    public static bool IsFlat(RowShape shape) => shape is RowShape.PromptResponse or RowShape.PromptCompletion or RowShape.Preference or RowShape.Prompt;

    /// <summary>The string cells of a flat shape's row, in the flat schema's column order (completion stands for response).</summary>
    public static (string[]? Cells, string? Problem) Cells(RowShape shape, JsonObject row)
    {
        string[] fields = Fields(shape);
        var cells = new string[fields.Length];
        for (int i = 0; i < fields.Length; i++)
        {
            JsonNode? v = row[fields[i]];
            if (v is null) cells[i] = "";                       // Parquet null = empty, as in CSV
            else if (v is JsonValue s && s.GetValueKind() == JsonValueKind.String) cells[i] = s.GetValue<string>();
            else return (null, $"field '{fields[i]}' must be a JSON string but is a {Kind(v)}; every row must have the file's shape, like {Example(shape)}");
        }
        return (cells, null);
    }

    /// <summary>A conversational SFT row: <c>messages</c>, or prompt + completion messages (loss on the completion only).</summary>
    public static (SftExample? Record, string? Problem) Sft(RowShape shape, JsonObject row)
    {
        if (shape == RowShape.Messages)
        {
            var (messages, problem) = Messages("messages", row["messages"]);
            if (problem is not null) return (null, problem);
            if (ChatText.LastAssistant(messages!) < 0)
                return (null, "field 'messages' has no assistant turn; an SFT conversation needs at least one assistant message to learn from");
            return (SftExample.FromConversation(messages!), null);
        }
        var (prompt, p1) = PromptMessages("prompt", row["prompt"]);
        if (p1 is not null) return (null, p1);
        var (completion, p2) = ResponseMessages("completion", row["completion"]);
        if (p2 is not null) return (null, p2);
        return (SftExample.FromConversation([.. prompt!, .. completion!], prompt!.Length), null);
    }

    /// <summary>A conversational preference row: explicit prompt, or the implicit prompt (the longest shared prefix of
    /// chosen and rejected; the differing tails are the responses).</summary>
    public static (PreferencePair? Record, string? Problem) Preference(RowShape shape, JsonObject row)
    {
        if (shape == RowShape.ConversationalPreference)
        {
            var (prompt, p0) = PromptMessages("prompt", row["prompt"]);
            if (p0 is not null) return (null, p0);
            var (chosen, p1) = ResponseMessages("chosen", row["chosen"]);
            if (p1 is not null) return (null, p1);
            var (rejected, p2) = ResponseMessages("rejected", row["rejected"]);
            if (p2 is not null) return (null, p2);
            return (PreferencePair.FromConversation(prompt!, chosen!, rejected!), null);
        }
        var (c, q1) = Messages("chosen", row["chosen"]);
        if (q1 is not null) return (null, q1);
        var (r, q2) = Messages("rejected", row["rejected"]);
        if (q2 is not null) return (null, q2);
        int shared = SharedPrefix(c!, r!);
        if (shared == 0)
            return (null, "chosen and rejected share no leading message, so there is no implicit prompt; start both "
                + "conversations with the same prompt messages, or give the prompt in its own field 'prompt'");
        if (shared == c!.Length || shared == r!.Length)
            return (null, "chosen and rejected do not differ in an assistant turn (one is the other's prefix or they are equal); "
                + "after the shared prompt each must continue with its own assistant message(s)");
        var (_, t1) = Continuation("chosen", c[shared..], shared);
        if (t1 is not null) return (null, t1);
        var (_, t2) = Continuation("rejected", r[shared..], shared);
        if (t2 is not null) return (null, t2);
        var (_, t0) = PromptProblem("the shared prefix of chosen and rejected", c[..shared]);
        if (t0 is not null) return (null, t0);
        return (PreferencePair.FromConversation(c[..shared], c[shared..], r[shared..]), null);
    }

    /// <summary>A conversational prompt row.</summary>
    public static (PromptExample? Record, string? Problem) Prompt(JsonObject row)
    {
        var (prompt, problem) = PromptMessages("prompt", row["prompt"]);
        return problem is null ? (PromptExample.FromConversation(prompt!), null) : (null, problem);
    }

    /// <summary>How many leading messages two conversations share.</summary>
    public static int SharedPrefix(IReadOnlyList<ChatMessage> a, IReadOnlyList<ChatMessage> b)
    {
        int n = 0;
        while (n < a.Count && n < b.Count && a[n] == b[n]) n++;
        return n;
    }

    // ---- messages -------------------------------------------------------------------------------------------------

    /// <summary>A field as a list of <c>{role, content}</c> messages, each role one of <see cref="ChatMessage.Roles"/>,
    /// non-empty content for user and assistant turns (a system or tool message may be empty).</summary>
    public static (ChatMessage[]? Messages, string? Problem) Messages(string field, JsonNode? node)
    {
        if (node is not JsonArray list)
            return (null, $"field '{field}' must be a list of messages like [{{\"role\": \"user\", \"content\": \"...\"}}] but is a {Kind(node)}");
        if (list.Count == 0) return (null, $"field '{field}' is an empty list; give it at least one message");
        var messages = new ChatMessage[list.Count];
        for (int i = 0; i < list.Count; i++)
        {
            string at = $"field '{field}' message {i + 1}";
            if (list[i] is not JsonObject m)
                return (null, $"{at} must be an object {{\"role\": \"...\", \"content\": \"...\"}} but is a {Kind(list[i])}");
            if (m["role"] is not JsonValue r || r.GetValueKind() != JsonValueKind.String)
                return (null, $"{at} needs a string 'role' ({string.Join(", ", ChatMessage.Roles)})");
            string role = r.GetValue<string>();
            if (!ChatMessage.Roles.Contains(role))
                return (null, $"{at} has role '{role}'; a role must be one of {string.Join(", ", ChatMessage.Roles)}");
            JsonNode? c = m["content"];
            if (c is not null && (c is not JsonValue cv || cv.GetValueKind() != JsonValueKind.String))
                return (null, $"{at} ({role}) must have a string 'content' but it is a {Kind(c)}");
            string content = c?.GetValue<string>() ?? "";
            if (role is "user" or "assistant" && content.Trim().Length == 0)
                return (null, $"{at} ({role}) has empty content; give every user and assistant turn some text or leave the row out");
            messages[i] = new ChatMessage(role, content);
        }
        return (messages, null);
    }

    /// <summary>A conversational prompt: messages not ending in an assistant turn (the model answers next).</summary>
    static (ChatMessage[]? Messages, string? Problem) PromptMessages(string field, JsonNode? node)
    {
        var (messages, problem) = Messages(field, node);
        return problem is not null ? (null, problem) : PromptProblem($"field '{field}'", messages!);
    }

    static (ChatMessage[]? Messages, string? Problem) PromptProblem(string what, ChatMessage[] messages) =>
        messages[^1].Role == "assistant"
            ? (null, $"{what} ends in an assistant turn; a prompt must end with the turn the model answers (user, tool or system)")
            : (messages, null);

    /// <summary>A response of a conversational row (completion, chosen, rejected): assistant (and tool) messages ending in an assistant turn.</summary>
    static (ChatMessage[]? Messages, string? Problem) ResponseMessages(string field, JsonNode? node)
    {
        var (messages, problem) = Messages(field, node);
        return problem is not null ? (null, problem) : Continuation(field, messages!, 0);
    }

    /// <summary>Checks a response: only assistant/tool turns, the last an assistant turn. <paramref name="offset"/> numbers
    /// the messages as in the field (for an implicit prompt's tail).</summary>
    static (ChatMessage[]? Messages, string? Problem) Continuation(string field, ChatMessage[] messages, int offset)
    {
        for (int i = 0; i < messages.Length; i++)
            if (messages[i].Role is "system" or "user")
                return (null, $"field '{field}' message {offset + i + 1} is a {messages[i].Role} turn inside the response; "
                    + "a response holds only assistant (and tool) turns — put the conversation before it in the prompt");
        return messages[^1].Role == "assistant" ? (messages, null)
            : (null, $"field '{field}' must end in an assistant turn but ends in a {messages[^1].Role} turn");
    }

    static string Kind(JsonNode? v) => v switch
    {
        null => "null",
        JsonArray => "list",
        JsonObject => "object",
        _ => v.GetValueKind() switch
        {
            JsonValueKind.String => "string",
            JsonValueKind.Number => "number",
            JsonValueKind.True or JsonValueKind.False => "boolean",
            _ => v.GetValueKind().ToString(),
        },
    };
}
