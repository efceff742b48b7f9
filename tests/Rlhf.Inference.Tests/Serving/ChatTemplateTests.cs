using Rlhf.Inference.Serving;

namespace Rlhf.Inference.Tests.Serving;

/// <summary>
/// The Jinja subset of chat templates, rendered in Hugging Face's environment (trim_blocks, lstrip_blocks). Templates
/// are written here in the style of the common families; each expected string is written out by hand from the
/// template's meaning.
/// </summary>
public sealed class ChatTemplateTests
{
    static string Render(string template, (string, string)[] messages, bool generationPrompt = true, string? bos = "<s>", string? eos = "</s>") =>
        ChatTemplate.Parse(template).Render(messages, generationPrompt, bos, eos);

    const string ChatMl =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    [Fact]
    public void ChatMlWithAndWithoutASystemMessage()
    {
        Assert.Equal("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            Render(ChatMl, [("system", "Be terse."), ("user", "Hi")]));
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n",
            Render(ChatMl, [("user", "Hi"), ("assistant", "Hello")], generationPrompt: false));
    }

    const string Llama2 = """
        {% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}
        {% for message in loop_messages %}
        {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}
        {% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}
        {% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}
        {% endfor %}
        """;

    [Fact]
    public void Llama2FoldsTheSystemMessageStripsAndRaisesOnRolesOutOfTurn()
    {
        // Every line ends in a block tag, so trim_blocks removes the newlines; the system text joins the first turn.
        Assert.Equal("<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] Bye [/INST]",
            Render(Llama2, [("system", "Be kind."), ("user", "Hello"), ("assistant", "  Hi there \n"), ("user", "Bye ")]));
        Assert.Equal("<s>[INST] Hello [/INST]", Render(Llama2, [("user", "Hello")]));
        var e = Assert.Throws<ChatTemplateException>(() => Render(Llama2, [("user", "a"), ("user", "b")]));
        Assert.True(e.Raised);
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", e.Message);
    }

    const string Llama3 =
        "{% set loop_messages = messages %}{% for message in loop_messages %}" +
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}" +
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

    [Fact]
    public void Llama3TrimsEachContentAndPutsBosFirst()
    {
        // '| trim' binds to message['content'] alone, not to the concatenation before it.
        Assert.Equal("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>" +
                     "<|start_header_id|>assistant<|end_header_id|>\n\nFour.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            Render(Llama3, [("user", "  What is 2+2? \n"), ("assistant", "Four.")], bos: "<|begin_of_text|>"));
    }

    const string Zephyr = """
        {% for message in messages %}
        {% if message['role'] == 'user' %}
        {{ '<|user|>\n' + message['content'] + eos_token }}
        {% elif message['role'] == 'system' %}
        {{ '<|system|>\n' + message['content'] + eos_token }}
        {% elif message['role'] == 'assistant' %}
        {{ '<|assistant|>\n'  + message['content'] + eos_token }}
        {% endif %}
        {% if loop.last and add_generation_prompt %}
        {{ '<|assistant|>' }}
        {% endif %}
        {% endfor %}
        """;

    [Fact]
    public void ZephyrKeepsTheNewlineAfterEachOutputLineOnly()
    {
        // Lines holding only block tags vanish (trim_blocks); a line with {{ }} keeps its newline.
        Assert.Equal("<|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\n", Render(Zephyr, [("system", "S"), ("user", "U")]));
        Assert.Equal("<|user|>\nU</s>\n<|assistant|>\nA</s>\n", Render(Zephyr, [("user", "U"), ("assistant", "A")], generationPrompt: false));
    }

    [Fact]
    public void IndentedBlockTagsLoseTheirIndentationAndWhitespaceMarkersStrip()
    {
        const string indented = "{% for m in messages %}\n    {% if m.role == 'user' %}\n    U: {{ m.content }}\n    {% endif %}\n{% endfor %}";
        Assert.Equal("    U: hi\n    U: yo\n", Render(indented, [("user", "hi"), ("assistant", "no"), ("user", "yo")]));
        Assert.Equal("ab|c", Render("a  {%- if true -%}  b  {%- endif %}|{{- ' c ' | trim -}}  ", []));
        Assert.Equal("x", Render("{# a comment #}\n{#- another -#}  x", []));
    }

    [Fact]
    public void ExpressionsFollowJinjaAndPython()
    {
        (string, string)[] three = [("system", "s"), ("user", "u1"), ("user", "u2")];
        Assert.Equal("3 u2 s|u1,u2 1 True False", Render(
            "{{ messages | length }} {{ messages[-1]['content'] }} {{ messages[0].content }}|{% for m in messages[1:] %}{{ m.content }}{% if not loop.last %},{% endif %}{% endfor %} " +
            "{{ -7 % 2 }} {{ 'u1' in messages[1]['content'] }} {{ 'z' not in 'abc' and false }}", three));
        Assert.Equal("yes|no|1-2|ab", Render(
            "{{ 'yes' if add_generation_prompt else 'no' }}|{{ 'no' if tools is defined else 'no' }}|{{ 1 ~ '-' ~ 2 }}|{% set x = 'a' %}{{ x + 'b' }}", []));
        Assert.Equal("", Render("{{ undefined_name }}{% if missing is not defined %}{% endif %}", []));
        Assert.Equal("None True", Render("{{ none }} {{ none is none }}", []));
        Assert.Equal("{\"a\": 1}}|%}", Render("{{ '{\"a\": 1}}' }}|{{ '%}' }}", []));   // a closing delimiter inside a string literal
        // A variable set inside a loop stays inside it.
        Assert.Equal("0", Render("{% set n = 0 %}{% for m in messages %}{% set n = n + 1 %}{% endfor %}{{ n }}", [("user", "a")]));
    }

    [Theory]
    [InlineData("{% macro greet(name) %}hi{% endmacro %}", "the statement '{% macro %}'")]
    [InlineData("{{ messages | tojson }}", "the filter '| tojson'")]
    [InlineData("{{ messages[0].items() }}", "the method '.items()'")]
    [InlineData("{% for k, v in messages %}{% endfor %}", "a for loop over several targets")]
    [InlineData("{% set ns = namespace(found=false) %}", "the function 'namespace()'")]
    [InlineData("{% for m in messages if m.role == 'user' %}{% endfor %}", "a filtered for loop")]
    [InlineData("{% raw %}x{% endraw %}", "the statement '{% raw %}'")]
    [InlineData("{{ 7 // 2 }}", "the operator '//'")]
    [InlineData("{{ x is mapping }}", "the test 'is mapping'")]
    public void ConstructsOutsideTheSubsetAreRefusedByName(string template, string construct)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(template));
        Assert.False(e.Raised);
        Assert.Contains("not supported: " + construct, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MalformedTemplatesAndBadOperationsFailWithAMessage()
    {
        Assert.Contains("without '{% endif %}'", Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{% if true %}x")).Message, StringComparison.Ordinal);
        Assert.Contains("unclosed", Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{{ x ")).Message, StringComparison.Ordinal);
        Assert.Contains("cannot add a string and an integer", Assert.Throws<ChatTemplateException>(() => Render("{{ 'a' + 1 }}", [])).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TheTemplateComesFromChatTemplateJinjaOrTokenizerConfig()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        try
        {
            Assert.Null(ChatTemplate.Find(dir));
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}""");
            Assert.Equal("D", ChatTemplate.Find(dir));
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"bos_token": "<s>", "chat_template": "{{ bos_token }}"}""");
            Assert.Equal("{{ bos_token }}", ChatTemplate.Find(dir));
            File.WriteAllText(Path.Combine(dir, "chat_template.jinja"), "J");
            Assert.Equal("J", ChatTemplate.Find(dir));
        }
        finally { Directory.Delete(dir, true); }
    }
}
