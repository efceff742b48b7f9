namespace Rlhf.Inference.Tokenization;

/// <summary>One turn of a conversation as Hugging Face chat templates and TRL's conversational datasets write it:
/// <c>{"role": "system" | "user" | "assistant" | "tool", "content": "..."}</c>. The same type carries a chat request
/// to the template renderer, a row of a conversational data file, and a rollout prompt.</summary>
public sealed record ChatMessage(string Role, string Content)
{
    /// <summary>The roles a conversation turn may have.</summary>
    public static readonly IReadOnlyList<string> Roles = ["system", "user", "assistant", "tool"];
}
