using System.Text.Json;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Tests.Tokenization;

/// <summary>
/// BOS exactly as the folder's own tokenizer puts it (<see cref="TextTokenizer.AddedBosId"/>): Qwen2.5-shaped folders add
/// none, Llama-3-shaped ones add &lt;|begin_of_text|&gt; (tokenizer.json's TemplateProcessing), <c>add_bos_token</c> decides
/// where it is given, and a rendered chat string encodes its special-token text to single ids with no second BOS.
/// </summary>
public sealed class BosTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-bos-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Byte-level BPE: ids 0..255 the bytes, then <paramref name="added"/> from 256 on (all special).</summary>
    static object TokenizerJson(string[] added, object? postProcessor)
    {
        var vocab = new Dictionary<string, int>();
        for (int b = 0; b < 256; b++) vocab[ByteLevel.ByteToChar((byte)b).ToString()] = b;
        for (int i = 0; i < added.Length; i++) vocab[added[i]] = 256 + i;
        return new
        {
            version = "1.0",
            added_tokens = added.Select((t, i) => new { id = 256 + i, content = t, single_word = false, lstrip = false, rstrip = false, normalized = false, special = true }),
            normalizer = (object?)null,
            pre_tokenizer = new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
            post_processor = postProcessor,
            decoder = new { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
            model = new { type = "BPE", vocab, merges = Array.Empty<string>() },
        };
    }

    string Folder(string name, object tokenizerJson, object tokenizerConfig)
    {
        string folder = Directory.CreateDirectory(Path.Combine(_dir, name)).FullName;
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), JsonSerializer.Serialize(tokenizerJson));
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), JsonSerializer.Serialize(tokenizerConfig));
        return folder;
    }

    static readonly object ByteLevelProcessor = new { type = "ByteLevel", add_prefix_space = false, trim_offsets = false, use_regex = true };

    /// <summary>Qwen2.5: ByteLevel post_processor, bos_token null; &lt;|endoftext|&gt; 256, &lt;|im_start|&gt; 257, &lt;|im_end|&gt; 258.</summary>
    string QwenFolder() => Folder("qwen", TokenizerJson(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ByteLevelProcessor),
        new Dictionary<string, object?> { ["bos_token"] = null, ["eos_token"] = "<|im_end|>", ["pad_token"] = "<|endoftext|>" });

    /// <summary>Llama 3: Sequence[ByteLevel, TemplateProcessing(&lt;|begin_of_text|&gt; $A)]; &lt;|begin_of_text|&gt; 256,
    /// &lt;|eot_id|&gt; 257, &lt;|start_header_id|&gt; 258, &lt;|end_header_id|&gt; 259.</summary>
    string LlamaFolder(bool? addBosToken = null)
    {
        var template = new
        {
            type = "TemplateProcessing",
            single = new object[] { new { SpecialToken = new { id = "<|begin_of_text|>", type_id = 0 } }, new { Sequence = new { id = "A", type_id = 0 } } },
            pair = Array.Empty<object>(),
            special_tokens = new Dictionary<string, object> { ["<|begin_of_text|>"] = new { id = "<|begin_of_text|>", ids = new[] { 256 }, tokens = new[] { "<|begin_of_text|>" } } },
        };
        var config = new Dictionary<string, object?> { ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|eot_id|>" };
        if (addBosToken is bool add) config["add_bos_token"] = add;
        return Folder($"llama-{addBosToken}", TokenizerJson(["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
            new { type = "Sequence", processors = new object[] { ByteLevelProcessor, template } }), config);
    }

    [Fact]
    public void QwenShapedFolderAddsNoBos()
    {
        var tk = TextTokenizer.Load(QwenFolder());
        Assert.Null(tk.AddedBosId);
        Assert.Equal(tk.Encode("Hi"), PromptFormat.PromptIds(tk, "Hi"));
        Assert.Equal([.. tk.Encode("H"), .. tk.Encode(" i"), 258], PromptFormat.JoinedIds(tk, "H", "i", 16));
    }

    [Fact]
    public void LlamaThreeShapedFolderAddsBeginOfText()
    {
        var tk = TextTokenizer.Load(LlamaFolder());
        Assert.Equal(256, tk.AddedBosId);
        Assert.Equal([256, .. tk.Encode("Hi")], PromptFormat.PromptIds(tk, "Hi"));
    }

    [Theory]
    [InlineData(false, null)]
    [InlineData(true, 256)]
    public void AddBosTokenInTheConfigDecidesOverThePostProcessor(bool addBosToken, int? expected) =>
        Assert.Equal(expected, TextTokenizer.Load(LlamaFolder(addBosToken)).AddedBosId);

    [Fact]
    public void WithoutAPostProcessorTheNamedBosGoesFirstAsBefore()
    {
        // This project's own tokenizer files: post_processor null, bos_token named.
        string folder = Folder("own", TokenizerJson(["<s>", "</s>"], postProcessor: null), new { bos_token = "<s>", eos_token = "</s>" });
        var tk = TextTokenizer.Load(folder);
        Assert.Equal(256, tk.BosId);
        Assert.Equal(256, tk.AddedBosId);
        Assert.Equal([256, .. tk.Encode("Hi")], PromptFormat.PromptIds(tk, "Hi"));
    }

    [Fact]
    public void ARenderedQwenChatEncodesSpecialTokensToSingleIdsWithoutBos()
    {
        string folder = QwenFolder();
        string source = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Tokenization", "ChatTemplates", "Qwen2.5-Instruct.jinja"));
        var config = JsonSerializer.Deserialize<Dictionary<string, object?>>(File.ReadAllText(Path.Combine(folder, "tokenizer_config.json")))!;
        config["chat_template"] = source;
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), JsonSerializer.Serialize(config));
        var tk = TextTokenizer.Load(folder);
        using var chat = ChatTemplate.Load(folder);
        string text = chat.Render([new("user", "Hi")], addGenerationPrompt: true);
        int[] ids = PromptFormat.PromptIds(tk, text);
        Assert.Equal(257, ids[0]);
        Assert.Equal(3, ids.Count(i => i == 257));     // system, user, assistant
        Assert.Equal(2, ids.Count(i => i == 258));
        Assert.Equal(text, tk.Decode(ids, skipSpecial: false));
    }

    [Fact]
    public void ARenderedLlamaChatHasExactlyOneBeginOfText()
    {
        string folder = LlamaFolder();
        string source = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Tokenization", "ChatTemplates", "Llama-3.2-Instruct.jinja"));
        File.WriteAllText(Path.Combine(folder, ChatTemplate.JinjaFile), source);
        var tk = TextTokenizer.Load(folder);
        using var chat = ChatTemplate.Load(folder);
        int[] ids = PromptFormat.PromptIds(tk, chat.Render([new("user", "Hi")], addGenerationPrompt: true));
        Assert.Equal(256, ids[0]);
        Assert.Single(ids, i => i == 256);
        Assert.Equal(2, ids.Count(i => i == 257));     // <|eot_id|> after system and user
        Assert.Equal(3, ids.Count(i => i == 258));     // system, user, assistant headers
    }

    [Fact]
    public void AScoredLlamaChatIsThePromptTokensThenTheResponseTokensWithOneBeginOfText()
    {
        string folder = LlamaFolder();
        File.WriteAllText(Path.Combine(folder, ChatTemplate.JinjaFile),
            File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Tokenization", "ChatTemplates", "Llama-3.2-Instruct.jinja")));
        var tk = TextTokenizer.Load(folder);
        using var chat = ChatTemplate.Load(folder);
        string prompt = chat.Render([new("user", "Hi")], addGenerationPrompt: true);   // ends with "assistant<|end_header_id|>\n\n"
        int[] joined = PromptFormat.JoinedIds(tk, prompt, "Hello!", 4096);
        Assert.Equal([.. PromptFormat.PromptIds(tk, prompt), .. PromptFormat.ResponseIds(tk, prompt, "Hello!")], joined);
        Assert.Single(joined, i => i == 256);
        Assert.Equal(prompt + "Hello!<|eot_id|>", tk.Decode(joined, skipSpecial: false));   // no separator after the newline
        int[] cut = PromptFormat.JoinedIds(tk, prompt, "Hello!", 20);   // truncated from the prompt's start: BOS stays first
        Assert.Equal(20, cut.Length);
        Assert.Equal(256, cut[0]);
        Assert.Equal(joined[^19..], cut[1..]);
    }
}
