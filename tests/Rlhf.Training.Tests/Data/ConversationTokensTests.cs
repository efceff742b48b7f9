using System.Text;
using System.Text.RegularExpressions;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data;

namespace Rlhf.Training.Tests.Data;

/// <summary>
/// <see cref="ConversationTokens"/> against hand-written ids and masks: a ChatML and a Llama-3-like lambda template, a
/// word-level fake encoder (special tokens, words, spaces and newlines each one id from a fixed vocabulary).
/// </summary>
public sealed partial class ConversationTokensTests
{
    // ---- the fake tokenizer: fixed ids so the expected sequences can be written by hand ----
    const int ImStart = 1, ImEnd = 2, NL = 3, Sp = 4, Bot = 5, Header = 6, EndHeader = 7, Eot = 8;
    const int User = 10, Assistant = 11, System_ = 12, Tool = 13;
    const int Hi = 20, Yo = 21, How = 22, Are = 23, You = 24, Fine = 25, Bye = 26, Be = 27, Brief = 28, Ok = 29;

    static readonly Dictionary<string, int> Vocab = new()
    {
        ["<|im_start|>"] = ImStart, ["<|im_end|>"] = ImEnd, ["\n"] = NL, [" "] = Sp, ["<|begin_of_text|>"] = Bot,
        ["<|start_header_id|>"] = Header, ["<|end_header_id|>"] = EndHeader, ["<|eot_id|>"] = Eot,
        ["user"] = User, ["assistant"] = Assistant, ["system"] = System_, ["tool"] = Tool,
        ["hi"] = Hi, ["yo"] = Yo, ["how"] = How, ["are"] = Are, ["you"] = You, ["fine"] = Fine, ["bye"] = Bye,
        ["be"] = Be, ["brief"] = Brief, ["ok"] = Ok,
    };

    [GeneratedRegex(@"<\|[a-z_]+\|>|[a-z]+|\n| ")]
    private static partial Regex Pieces();

    /// <summary>Word-level encoding; every character must belong to a known piece.</summary>
    static int[] Encode(string text)
    {
        var ids = new List<int>();
        int at = 0;
        foreach (Match m in Pieces().Matches(text))
        {
            Assert.True(m.Index == at, $"unknown text '{text[at..m.Index]}'");
            ids.Add(Vocab[m.Value]);
            at = m.Index + m.Length;
        }
        Assert.True(at == text.Length, $"unknown text '{text[at..]}'");
        return [.. ids];
    }

    static string ChatMl(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        var sb = new StringBuilder();
        foreach (var m in messages) sb.Append($"<|im_start|>{m.Role}\n{m.Content}<|im_end|>\n");
        if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    }

    static string Llama3(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        var sb = new StringBuilder("<|begin_of_text|>");
        foreach (var m in messages) sb.Append($"<|start_header_id|>{m.Role}<|end_header_id|>\n\n{m.Content.Trim()}<|eot_id|>");
        if (addGenerationPrompt) sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
        return sb.ToString();
    }

    static readonly HashSet<int> ChatMlEnd = [ImEnd];
    static readonly HashSet<int> Llama3End = [Eot];

    static ChatMessage U(string c) => new("user", c);
    static ChatMessage A(string c) => new("assistant", c);
    static ChatMessage S(string c) => new("system", c);

    static bool[] Mask(string bits) => [.. bits.Where(c => c != ' ').Select(c => c == '1')];

    [Fact]
    public void ChatMlSingleTurnLearnsTheReplyAndItsEndOfTurnButNotTheNewlineAfterIt()
    {
        var t = ConversationTokens.FromMessages([U("hi"), A("yo")], ChatMl, Encode, ChatMlEnd);
        Assert.Equal([ImStart, User, NL, Hi, ImEnd, NL, ImStart, Assistant, NL, Yo, ImEnd, NL], t.Ids);
        Assert.Equal(Mask("000000 000 110"), t.Loss);
    }

    [Fact]
    public void ChatMlMultiTurnWithSystemLearnsEveryAssistantTurn()
    {
        ChatMessage[] chat = [S("be brief"), U("hi"), A("yo"), U("how are you"), A("fine")];
        var t = ConversationTokens.FromMessages(chat, ChatMl, Encode, ChatMlEnd);
        int[] expected =
        [
            ImStart, System_, NL, Be, Sp, Brief, ImEnd, NL,
            ImStart, User, NL, Hi, ImEnd, NL,
            ImStart, Assistant, NL, Yo, ImEnd, NL,
            ImStart, User, NL, How, Sp, Are, Sp, You, ImEnd, NL,
            ImStart, Assistant, NL, Fine, ImEnd, NL,
        ];
        Assert.Equal(expected, t.Ids);
        Assert.Equal(Mask("00000000 000000 000110 0000000000 000110"), t.Loss);
        Assert.Equal(Encode(ChatMl(chat, false)), t.Ids);            // the pieces encode as the whole text does
    }

    [Fact]
    public void PromptTurnsAreContextOnly()
    {
        ChatMessage[] chat = [U("hi"), A("yo"), U("how are you"), A("fine")];
        var t = ConversationTokens.FromMessages(chat, ChatMl, Encode, ChatMlEnd, promptTurns: 3);
        Assert.Equal(Encode(ChatMl(chat, false)), t.Ids);
        Assert.Equal(Mask("000000 000000 0000000000 000110"), t.Loss);
    }

    [Fact]
    public void Llama3LikeTemplateWithBosTextAndTrailingUserTurn()
    {
        ChatMessage[] chat = [U("hi"), A("yo"), U("bye")];
        var t = ConversationTokens.FromMessages(chat, Llama3, Encode, Llama3End);
        int[] expected =
        [
            Bot,
            Header, User, EndHeader, NL, NL, Hi, Eot,
            Header, Assistant, EndHeader, NL, NL, Yo, Eot,
            Header, User, EndHeader, NL, NL, Bye, Eot,
        ];
        Assert.Equal(expected, t.Ids);
        Assert.Equal(Mask("0 0000000 0000011 0000000"), t.Loss);
    }

    [Fact]
    public void Llama3LikeMultiTurn()
    {
        ChatMessage[] chat = [S("be brief"), U("hi"), A("yo"), U("how are you"), A("fine")];
        var t = ConversationTokens.FromMessages(chat, Llama3, Encode, Llama3End);
        Assert.Equal(Encode(Llama3(chat, false)), t.Ids);
        Assert.Equal(Mask("0 000000000 0000000 0000011 00000000000 0000011"), t.Loss);
    }

    [Fact]
    public void PromptIdsEndWithTheGenerationPrompt()
    {
        Assert.Equal([ImStart, User, NL, Hi, ImEnd, NL, ImStart, Assistant, NL],
            ConversationTokens.PromptIds([U("hi")], ChatMl, Encode));
        Assert.Equal([Bot, Header, User, EndHeader, NL, NL, Hi, Eot, Header, Assistant, EndHeader, NL, NL],
            ConversationTokens.PromptIds([U("hi")], Llama3, Encode));
    }

    [Fact]
    public void ATemplateThatRewritesEarlierTurnsIsRejected()
    {
        // Drops the content of assistant turns before the last one (as templates that strip past reasoning do).
        static string Forgetful(IReadOnlyList<ChatMessage> messages, bool gen)
        {
            int last = messages.Select((m, i) => m.Role == "assistant" ? i : -1).Max();
            return ChatMl([.. messages.Select((m, i) => m.Role == "assistant" && i != last ? m with { Content = "ok" } : m)], gen);
        }
        var e = Assert.Throws<ArgumentException>(() =>
            ConversationTokens.FromMessages([U("hi"), A("yo"), U("bye"), A("fine")], Forgetful, Encode, ChatMlEnd));
        Assert.Contains("not prefix-stable", e.Message);
        Assert.Contains("message 4", e.Message);
    }

    [Fact]
    public void MissingEndOfTurnOrAssistantTurnIsAnError()
    {
        Assert.Contains("no end-of-turn token", Assert.Throws<ArgumentException>(() =>
            ConversationTokens.FromMessages([U("hi"), A("yo")], ChatMl, Encode, Llama3End)).Message);
        Assert.Contains("no assistant turn", Assert.Throws<ArgumentException>(() =>
            ConversationTokens.FromMessages([U("hi")], ChatMl, Encode, ChatMlEnd)).Message);
        Assert.Contains("no assistant turn", Assert.Throws<ArgumentException>(() =>
            ConversationTokens.FromMessages([U("hi"), A("yo"), U("bye")], ChatMl, Encode, ChatMlEnd, promptTurns: 2)).Message);
    }
}
