using System.Text.Json.Serialization;
using Parquet.Serialization;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data;

namespace Rlhf.Training.Tests.Data;

/// <summary>TRL's dataset formats (standard and conversational SFT, preference and prompt-only rows; the implicit
/// prompt) in JSONL and Parquet, the column mapping, and the one-line errors of rows that do not fit.</summary>
public sealed class TrlFormatsTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-trl-formats-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    string Jsonl(string name, params string[] lines)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, string.Join('\n', lines) + "\n");
        return path;
    }

    static ChatMessage U(string c) => new("user", c);
    static ChatMessage A(string c) => new("assistant", c);
    static ChatMessage S(string c) => new("system", c);

    const string Hi = """{"role": "user", "content": "Hi"}""";
    const string Hello = """{"role": "assistant", "content": "Hello!"}""";
    const string Bye = """{"role": "assistant", "content": "Bye."}""";

    // ---- SFT ----------------------------------------------------------------------------------------------------

    [Fact]
    public void SftMessagesRowsKeepTheConversation()
    {
        string path = Jsonl("sft.jsonl",
            $$"""{"messages": [{"role": "system", "content": "Be kind."}, {{Hi}}, {{Hello}}, {"role": "user", "content": "And?"}, {{Bye}}]}""");
        var r = Assert.Single(DataFiles.ReadSft(path).Records);
        Assert.True(r.IsConversational);
        Assert.Equal([S("Be kind."), U("Hi"), A("Hello!"), U("And?"), A("Bye.")], r.Messages!);
        Assert.Equal(0, r.PromptTurns);
        Assert.Equal("Be kind.\n\nHi\n\nHello!\n\nAnd?", r.Prompt);    // the plain-text view: up to the last assistant turn
        Assert.Equal("Bye.", r.Response);
    }

    [Fact]
    public void SftPromptCompletionStandardAndConversational()
    {
        string standard = Jsonl("pc.jsonl", """{"prompt": "The sky is", "completion": " blue."}""");
        var s = Assert.Single(DataFiles.ReadSft(standard).Records);
        Assert.Equal(new SftExample("The sky is", " blue."), s);
        Assert.False(s.IsConversational);

        string conv = Jsonl("pcc.jsonl", $$"""{"prompt": [{{Hi}}, {{Hello}}, {"role": "user", "content": "Bye?"}], "completion": [{{Bye}}]}""");
        var c = Assert.Single(DataFiles.ReadSft(conv).Records);
        Assert.Equal([U("Hi"), A("Hello!"), U("Bye?"), A("Bye.")], c.Messages!);
        Assert.Equal(3, c.PromptTurns);                                  // loss on the completion only
    }

    [Fact]
    public void FlatPromptResponseStillReads()
    {
        string path = Jsonl("flat.jsonl", """{"prompt": "a", "response": "b"}""");
        Assert.Equal([new SftExample("a", "b")], DataFiles.ReadSft(path).Records);
    }

    [Fact]
    public void ALaterRowOfAnotherShapeIsNamed()
    {
        string path = Jsonl("mixed.jsonl",
            $$"""{"messages": [{{Hi}}, {{Hello}}]}""",
            """{"prompt": "a", "completion": "b"}""");
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path));
        Assert.Equal(2, e.Line);
        Assert.Contains("every row of a file must have the same shape", e.Problem);
        Assert.Single(DataFiles.ReadSft(path, skipMalformed: true).Records);

        path = Jsonl("mixed2.jsonl", """{"prompt": "a", "completion": "b"}""", $$"""{"prompt": [{{Hi}}], "completion": [{{Hello}}]}""");
        Assert.Equal(2, Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path)).Line);
    }

    [Fact]
    public void UnknownShapeListsFieldsFoundAndShapesAccepted()
    {
        string path = Jsonl("unknown.jsonl", """{"question": "a", "answer": "b"}""");
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path));
        Assert.Equal(1, e.Line);
        Assert.Contains("'question', 'answer'", e.Problem);
        Assert.Contains("\"messages\"", e.Problem);
        Assert.Contains("dataset_columns", e.Problem);
    }

    [Theory]
    [InlineData("""{"messages": [{"role": "bot", "content": "x"}]}""", "role 'bot'")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}]}""", "no assistant turn")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}""", "message 2 (assistant) has empty content")]
    [InlineData("""{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}""", "message 1 (user) has empty content")]
    [InlineData("""{"messages": "Hi"}""", "must be a list of messages")]
    [InlineData("""{"messages": []}""", "empty list")]
    [InlineData("""{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "user", "content": "x"}]}""", "user turn inside the response")]
    [InlineData("""{"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}], "completion": [{"role": "assistant", "content": "y"}]}""", "ends in an assistant turn")]
    public void BadConversationsFailWithOneMessage(string line, string expected)
    {
        string path = Jsonl("bad.jsonl", line);
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path));
        Assert.Equal(1, e.Line);
        Assert.Contains(expected, e.Problem);
        Assert.StartsWith($"{path}:1: ", e.Message);
    }

    [Fact]
    public void EmptySystemMessageIsAllowed()
    {
        string path = Jsonl("sys.jsonl", $$"""{"messages": [{"role": "system", "content": ""}, {{Hi}}, {{Hello}}]}""");
        Assert.Equal([S(""), U("Hi"), A("Hello!")], Assert.Single(DataFiles.ReadSft(path).Records).Messages!);
    }

    // ---- preferences ----------------------------------------------------------------------------------------------

    [Fact]
    public void PreferencesStandardConversationalAndImplicitPrompt()
    {
        string standard = Jsonl("p.jsonl", """{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}""");
        Assert.Equal([new PreferencePair("The sky is", " blue.", " green.")], DataFiles.ReadPreferences(standard).Records);

        string conv = Jsonl("pc.jsonl", $$"""{"prompt": [{{Hi}}], "chosen": [{{Hello}}], "rejected": [{{Bye}}]}""");
        var c = Assert.Single(DataFiles.ReadPreferences(conv).Records);
        Assert.True(c.IsConversational);
        Assert.Equal([U("Hi")], c.PromptMessages!);
        Assert.Equal([A("Hello!")], c.ChosenMessages!);
        Assert.Equal([A("Bye.")], c.RejectedMessages!);
        Assert.Equal(("Hi", "Hello!", "Bye."), (c.Prompt, c.Chosen, c.Rejected));

        string implicitPrompt = Jsonl("pi.jsonl",
            $$"""{"chosen": [{{Hi}}, {{Hello}}, {"role": "user", "content": "More?"}, {{Hello}}], "rejected": [{{Hi}}, {{Hello}}, {"role": "user", "content": "More?"}, {{Bye}}]}""");
        var i = Assert.Single(DataFiles.ReadPreferences(implicitPrompt).Records);
        Assert.Equal(PreferencePair.FromConversation([U("Hi"), A("Hello!"), U("More?")], [A("Hello!")], [A("Bye.")]), i);
    }

    [Theory]
    [InlineData("""{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}""", "share no leading message")]
    [InlineData("""{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}""", "do not differ in an assistant turn")]
    [InlineData("""{"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}""", "message 2 is a user turn inside the response")]
    [InlineData("""{"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "assistant", "content": "b"}, {"role": "tool", "content": "t"}], "rejected": [{"role": "assistant", "content": "d"}]}""", "'chosen' must end in an assistant turn")]
    [InlineData("""{"prompt": [{"role": "user", "content": "a"}], "chosen": "b", "rejected": [{"role": "assistant", "content": "d"}]}""", "'chosen' must be a list of messages")]
    public void BadPreferencesFailWithOneMessage(string line, string expected)
    {
        string path = Jsonl("bad.jsonl", line);
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadPreferences(path));
        Assert.Equal(1, e.Line);
        Assert.Contains(expected, e.Problem);
    }

    // ---- prompts --------------------------------------------------------------------------------------------------

    [Fact]
    public void PromptsAsStringsOrMessages()
    {
        string flat = Jsonl("p.jsonl", """{"prompt": "The pasta"}""");
        Assert.False(Assert.Single(DataFiles.ReadPrompts(flat).Records).IsConversational);
        string conv = Jsonl("pc.jsonl", $$"""{"prompt": [{"role": "system", "content": "Be kind."}, {{Hi}}]}""");
        var p = Assert.Single(DataFiles.ReadPrompts(conv).Records);
        Assert.Equal([S("Be kind."), U("Hi")], p.Messages!);
        Assert.Contains("ends in an assistant turn", Assert.Throws<DataFileException>(() =>
            DataFiles.ReadPrompts(Jsonl("pa.jsonl", $$"""{"prompt": [{{Hi}}, {{Hello}}]}"""))).Problem);
    }

    // ---- column mapping -------------------------------------------------------------------------------------------

    [Fact]
    public void ColumnMappingRenamesTheFilesFields()
    {
        var columns = new DatasetColumns { Prompt = "question", Response = "answer" };
        string jsonl = Jsonl("qa.jsonl", """{"question": "a", "answer": "b", "prompt": "ignored"}""");
        Assert.Equal([new SftExample("a", "b")], DataFiles.ReadSft(jsonl, columns: columns).Records);

        string csv = Path.Combine(_dir, "qa.csv");
        File.WriteAllText(csv, "question,answer\na,b\n");
        Assert.Equal([new SftExample("a", "b")], DataFiles.ReadSft(csv, columns: columns).Records);
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(csv));
        Assert.Contains("no column 'prompt'", e.Problem);

        string conv = Jsonl("conv.jsonl", $$"""{"dialog": [{{Hi}}, {{Hello}}]}""");
        Assert.Single(DataFiles.ReadSft(conv, columns: new DatasetColumns { Messages = "dialog" }).Records);

        string pairs = Jsonl("pairs.jsonl", """{"input": "p", "good": "c", "bad": "r"}""");
        Assert.Equal([new PreferencePair("p", "c", "r")],
            DataFiles.ReadPreferences(pairs, columns: new DatasetColumns { Prompt = "input", Chosen = "good", Rejected = "bad" }).Records);
    }

    [Fact]
    public void ColumnMappingIsValidated()
    {
        Assert.Null(new DatasetColumns().Problem());
        Assert.Contains("same column 'x'", new DatasetColumns { Prompt = "x", Response = "x" }.Problem());
        Assert.Contains("dataset_columns.chosen", new DatasetColumns { Chosen = " " }.Problem());
        var cfg = Rlhf.Training.Common.ConfigLoader.Load<Rlhf.Training.Sft.SftConfig>(null, ["dataset_columns.prompt=question"]);
        Assert.Equal("question", cfg.DatasetColumns.Prompt);
        Assert.Equal("response", cfg.DatasetColumns.Response);
    }

    // ---- the stages' edge: conversations through the model's chat template --------------------------------------

    const string ChatMl = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                          + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    [Fact]
    public void ConversationsNeedTheModelsChatTemplate()
    {
        string conv = Jsonl("conv.jsonl", $$"""{"messages": [{{Hi}}, {{Hello}}]}""");
        var rows = DataFiles.ReadSft(conv).Records;
        string noTemplate = Directory.CreateDirectory(Path.Combine(_dir, "plain_model")).FullName;
        var e = Assert.Throws<InvalidDataException>(() => ChatText.TemplateFor(rows, noTemplate, conv));
        Assert.StartsWith($"{conv}: ", e.Message);
        Assert.Contains($"{noTemplate} has none", e.Message);
        string flat = Jsonl("flat.jsonl", """{"prompt": "a", "response": "b"}""");
        Assert.Null(ChatText.TemplateFor(DataFiles.ReadSft(flat).Records, noTemplate, flat));   // flat rows keep the plain format

        var sft = new Rlhf.Training.Sft.SftConfig { TrainFile = conv };   // a fresh model has no template
        Assert.Contains("init_from", Assert.Throws<InvalidDataException>(() =>
            Rlhf.Training.Sft.SftData.Template(sft, Rlhf.Training.Sft.SftData.Load(sft))).Message);
    }

    [Fact]
    public void ConversationalPromptsAndPairsBecomeTheRenderedPromptAndTheAssistantText()
    {
        using var chat = ChatTemplate.FromSource(ChatMl, null, "<|im_end|>");
        var prompt = PromptExample.FromConversation([new ChatMessage("system", "Be brief."), new ChatMessage("user", "Hi")]);
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", ChatText.PromptText(prompt, chat));
        Assert.Equal("plain", ChatText.PromptText(new PromptExample("plain"), null));
        var pair = PreferencePair.FromConversation([new ChatMessage("user", "Hi")], [new ChatMessage("assistant", "Hello!")], [new ChatMessage("assistant", "Go away.")]);
        Assert.Equal(new PreferencePair("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "Hello!", "Go away."), ChatText.Rendered(pair, chat, "p.jsonl"));
        var twoTurns = PreferencePair.FromConversation([new ChatMessage("user", "Hi")],
            [new ChatMessage("assistant", "Hello!"), new ChatMessage("user", "And?"), new ChatMessage("assistant", "Bye.")], [new ChatMessage("assistant", "No.")]);
        Assert.StartsWith("p.jsonl: a chosen continuation of 3 messages", Assert.Throws<InvalidDataException>(() => ChatText.Rendered(twoTurns, chat, "p.jsonl")).Message);
    }

    [Fact]
    public void ConversationalRecordsAreNotWritten()
    {
        var r = SftExample.FromConversation([U("Hi"), A("Hello!")]);
        Assert.Throws<ArgumentException>(() => DataFiles.WriteSft(Path.Combine(_dir, "out.jsonl"), [r]));
    }

    // ---- Parquet as Hugging Face datasets write it ----------------------------------------------------------------

    sealed class Message
    {
        [JsonPropertyName("content")] public string? Content { get; set; }
        [JsonPropertyName("role")] public string? Role { get; set; }
    }

    sealed class MessagesRow
    {
        [JsonPropertyName("messages")] public List<Message>? Messages { get; set; }
    }

    sealed class ConversationalPairRow
    {
        [JsonPropertyName("prompt")] public List<Message>? Prompt { get; set; }
        [JsonPropertyName("chosen")] public List<Message>? Chosen { get; set; }
        [JsonPropertyName("rejected")] public List<Message>? Rejected { get; set; }
    }

    sealed class ImplicitPairRow
    {
        [JsonPropertyName("chosen")] public List<Message>? Chosen { get; set; }
        [JsonPropertyName("rejected")] public List<Message>? Rejected { get; set; }
    }

    sealed class PromptRow
    {
        [JsonPropertyName("prompt")] public List<Message>? Prompt { get; set; }
    }

    sealed class QaRow
    {
        [JsonPropertyName("question")] public string? Question { get; set; }
        [JsonPropertyName("completion")] public string? Completion { get; set; }
    }

    string Parquet<T>(string name, IEnumerable<T> rows)
    {
        string path = Path.Combine(_dir, name);
        using (var fs = File.Create(path)) ParquetSerializer.SerializeAsync(rows, fs).GetAwaiter().GetResult();
        return path;
    }

    static Message M(string role, string content) => new() { Role = role, Content = content };

    [Fact]
    public void ParquetNestedMessagesRead()
    {
        string sft = Parquet("sft.parquet", new[]
        {
            new MessagesRow { Messages = [M("user", "Hi"), M("assistant", "Hello!")] },
            new MessagesRow { Messages = [M("system", "Be kind."), M("user", "Hi"), M("assistant", "Bye.")] },
        });
        var read = DataFiles.ReadSft(sft).Records;
        Assert.Equal([U("Hi"), A("Hello!")], read[0].Messages!);
        Assert.Equal([S("Be kind."), U("Hi"), A("Bye.")], read[1].Messages!);

        string pairs = Parquet("pairs.parquet", new[]
        {
            new ConversationalPairRow { Prompt = [M("user", "Hi")], Chosen = [M("assistant", "Hello!")], Rejected = [M("assistant", "Bye.")] },
        });
        Assert.Equal([PreferencePair.FromConversation([U("Hi")], [A("Hello!")], [A("Bye.")])], DataFiles.ReadPreferences(pairs).Records);

        string implicitPairs = Parquet("implicit.parquet", new[]
        {
            new ImplicitPairRow { Chosen = [M("user", "Hi"), M("assistant", "Hello!")], Rejected = [M("user", "Hi"), M("assistant", "Bye.")] },
        });
        Assert.Equal([PreferencePair.FromConversation([U("Hi")], [A("Hello!")], [A("Bye.")])], DataFiles.ReadPreferences(implicitPairs).Records);

        string prompts = Parquet("prompts.parquet", new[] { new PromptRow { Prompt = [M("user", "Hi")] } });
        Assert.Equal([U("Hi")], Assert.Single(DataFiles.ReadPrompts(prompts).Records).Messages!);

        string qa = Parquet("qa.parquet", new[] { new QaRow { Question = "The sky is", Completion = " blue." } });
        Assert.Equal([new SftExample("The sky is", " blue.")], DataFiles.ReadSft(qa, columns: new DatasetColumns { Prompt = "question" }).Records);
    }

    [Fact]
    public void ParquetBadMessagesNameTheRow()
    {
        string sft = Parquet("bad.parquet", new[]
        {
            new MessagesRow { Messages = [M("user", "Hi"), M("assistant", "Hello!")] },
            new MessagesRow { Messages = [M("human", "Hi"), M("assistant", "Hello!")] },
        });
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(sft));
        Assert.Equal(2, e.Line);
        Assert.Contains("role 'human'", e.Problem);
    }
}
