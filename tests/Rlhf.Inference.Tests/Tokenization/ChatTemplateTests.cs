using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Tests.Tokenization;

/// <summary>
/// Real model chat templates (ChatTemplates/*.jinja, sources in its README) rendered by <see cref="ChatTemplate"/> equal
/// the strings Python's jinja2 renders in transformers' environment (ChatTemplates/expected.json, made once by
/// make_expected.py): multi-turn, system message, generation prompt on and off, tools, non-ASCII text, and the
/// raise_exception message where the template rejects the messages.
/// </summary>
public sealed class ChatTemplateTests : IDisposable
{
    static readonly string Fixtures = Path.Combine(AppContext.BaseDirectory, "Tokenization", "ChatTemplates");
    static readonly JsonObject Expected = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures, "expected.json")))!.AsObject();

    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-chat-test-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Every (template, case) pair of expected.json.</summary>
    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var (template, model) in Expected)
            foreach (var (name, _) in model!["cases"]!.AsObject()) data.Add(template, name);
        return data;
    }

    /// <summary>A folder whose tokenizer_config.json holds the template and the model's special tokens (or, with
    /// <paramref name="jinjaFile"/>, the template in chat_template.jinja).</summary>
    string ModelFolder(string template, bool jinjaFile = false)
    {
        string folder = Directory.CreateDirectory(Path.Combine(_dir, template + (jinjaFile ? "-file" : ""))).FullName;
        var config = Expected[template]!["special_tokens"]!.DeepClone().AsObject();
        string source = File.ReadAllText(Path.Combine(Fixtures, template));
        if (jinjaFile) File.WriteAllText(Path.Combine(folder, ChatTemplate.JinjaFile), source);
        else config["chat_template"] = source;
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString());
        return folder;
    }

    static string Today(DateTime t) => t.ToString("dd MMM yyyy", CultureInfo.InvariantCulture);

    [Theory]
    [MemberData(nameof(Cases))]
    public void RendersAsTransformers(string template, string name)
    {
        var c = Expected[template]!["cases"]![name]!;
        var messages = c["messages"]!.AsArray().Select(m => new ChatMessage((string)m!["role"]!, (string)m["content"]!)).ToList();
        string? tools = c["tools"] is JsonNode t ? t.ToJsonString() : null;
        bool addGenerationPrompt = (bool)c["add_generation_prompt"]!;
        foreach (bool jinjaFile in new[] { false, true })
        {
            using var chat = ChatTemplate.Load(ModelFolder(template, jinjaFile));
            if (c["error"] is JsonNode error)
            {
                // The template rejects these messages through raise_exception: jinja2's message, on one line.
                var e = Assert.Throws<ChatTemplateException>(() => chat.Render(messages, addGenerationPrompt, tools));
                Assert.StartsWith((string)error!, e.Message, StringComparison.Ordinal);
                Assert.DoesNotContain('\n', e.Message);
                continue;
            }
            string expected = (string)c["expected"]!;
            var before = DateTime.Now;
            string got = chat.Render(messages, addGenerationPrompt, tools);
            var after = DateTime.Now;
            // strftime_now is the local date; a render across midnight may take either day.
            Assert.Contains(got, new[] { expected.Replace("{{DATE}}", Today(before), StringComparison.Ordinal), expected.Replace("{{DATE}}", Today(after), StringComparison.Ordinal) });
        }
    }

    [Fact]
    public void AListOfNamedTemplatesUsesTheDefaultOne()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), JsonSerializer.Serialize(new
        {
            eos_token = "</s>",
            chat_template = new[] { new { name = "tool_use", template = "T" }, new { name = "default", template = "{{ messages[0].content }}{{ eos_token }}" } },
        }));
        using var chat = ChatTemplate.Load(_dir);
        Assert.Equal("Hi</s>", chat.Render([new("user", "Hi")], addGenerationPrompt: false));
        Assert.Null(chat.BosToken);
    }

    [Fact]
    public void AnUnsetBosTokenIsUndefinedAsInTransformers()
    {
        // GenAI alone would render its own "<s>" here; transformers leaves bos_token undefined when the folder names none.
        using var chat = ChatTemplate.FromSource("[{{ bos_token }}][{{ bos_token is defined }}][{{ eos_token }}]", bosToken: null, eosToken: "<|im_end|>");
        Assert.Equal("[][False][<|im_end|>]", chat.Render([new("user", "x")], addGenerationPrompt: true));
    }

    [Fact]
    public void AFolderWithoutATemplateHasNone()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), """{"eos_token": "</s>"}""");
        Assert.Null(ChatTemplate.TryLoad(_dir));
        Assert.Contains("has no chat template", Assert.Throws<ChatTemplateException>(() => ChatTemplate.Load(_dir)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ATemplateThatCannotRenderFailsAtLoadInOneLineNamingTheFile()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), """{"chat_template": "{% for m in %}{{ m }}{% endfor %}"}""");
        string message = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Load(_dir)).Message;
        Assert.StartsWith(Path.Combine(_dir, "tokenizer_config.json") + " 'chat_template': the chat template cannot be rendered: ", message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', message);
    }

    [Fact]
    public void RaiseExceptionGivesItsMessage()
    {
        using var chat = ChatTemplate.FromSource(
            "{% if messages | length > 1 %}{{ raise_exception('Only one message, please') }}{% endif %}{{ messages[0].content }}", null, null);
        Assert.Equal("x", chat.Render([new("user", "x")], addGenerationPrompt: false));
        var e = Assert.Throws<ChatTemplateException>(() => chat.Render([new("user", "a"), new("user", "b")], addGenerationPrompt: false));
        Assert.StartsWith("Only one message, please", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ToolsMustBeAJsonArray()
    {
        using var chat = ChatTemplate.FromSource("{% if tools is none %}none{% else %}{{ tools | length }}{% endif %}", null, null);
        Assert.Equal("none", chat.Render([new("user", "x")], false));
        Assert.Equal("1", chat.Render([new("user", "x")], false, """[{"type": "function"}]"""));
        Assert.Throws<ChatTemplateException>(() => chat.Render([new("user", "x")], false, """{"type": "function"}"""));
    }

    [Fact]
    public void ToolsReachTheTemplateUnchanged()
    {
        // Expected: json.dumps(tools, ensure_ascii=False), transformers' tojson, of the same value.
        using var chat = ChatTemplate.FromSource("{{ tools | tojson }}", null, null);
        string tools = """[{"d": "It's a \"test\" \\ x\nnext\ttab \u00e9", "n": null, "b": true, "f": 1.5, "i": -2, "l": []}]""";
        Assert.Equal("[{\"d\": \"It's a \\\"test\\\" \\\\ x\\nnext\\ttab \u00e9\", \"n\": null, \"b\": true, \"f\": 1.5, \"i\": -2, \"l\": []}]",
            chat.Render([new("user", "x")], false, tools));
    }

    [Fact]
    public void ConcurrentRendersEqualSerialOnes()
    {
        using var chat = ChatTemplate.Load(ModelFolder("Qwen2.5-Instruct.jinja"));
        string Render(int i) => chat.Render([new("user", $"question {i}")], addGenerationPrompt: true);
        var serial = Enumerable.Range(0, 64).Select(Render).ToArray();
        var parallel = new string[64];
        Parallel.For(0, 64, i => parallel[i] = Render(i));
        Assert.Equal(serial, parallel);
    }

    [Theory]
    [InlineData("{% if true %}\nX{% endif %}\n", "X")]
    [InlineData("a\n  {% if true %}X{% endif %}|\n  {# c #}\nY", "a\nX|\nY")]
    [InlineData("a  {% if true %}X{% endif %}", "a  X")]
    [InlineData("{% if true +%}\nZ{% endif %}", "\nZ")]
    [InlineData("{{ '%}' }}\n{% set s = '%}' %}\n{{ s }}", "%}\n%}")]
    public void WhitespaceControlMatchesJinjaTrimAndLstripBlocks(string template, string expected)
    {
        // Expected values: jinja2 3.1 with trim_blocks=True, lstrip_blocks=True.
        using var chat = ChatTemplate.FromSource(template, null, null);
        Assert.Equal(expected, chat.Render([new("user", "x")], addGenerationPrompt: false));
    }
}
