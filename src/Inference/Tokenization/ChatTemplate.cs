using System.Text;
using System.Text.Json;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace Rlhf.Inference.Tokenization;

/// <summary>
/// A model folder's Hugging Face chat template, rendered as transformers' <c>apply_chat_template(..., tokenize=False)</c>
/// renders it: by the Jinja engine inside ONNX Runtime GenAI's native library (<c>Tokenizer.ApplyChatTemplate</c>), with
/// <c>bos_token</c>/<c>eos_token</c> from the folder's tokenizer configs and transformers' <c>trim_blocks</c>/<c>lstrip_blocks</c>
/// applied to the source first (<see cref="JinjaWhitespace"/>; GenAI 0.18 applies neither). <c>tojson</c>,
/// <c>raise_exception</c> and <c>strftime_now</c> (local time) come from GenAI. No ONNX model is needed: the GenAI
/// tokenizer is built from a scratch folder holding only what it reads. Rendering is serialized by a lock (one native
/// tokenizer per template); dispose to free it.
/// </summary>
public sealed class ChatTemplate : IDisposable
{
    /// <summary>The file a folder may hold its template in (transformers >= 4.43 writes it).</summary>
    public const string JinjaFile = "chat_template.jinja";

    static readonly IReadOnlyList<ChatMessage> Probe = [new("user", "Hello")];
    static readonly Lazy<bool> TelemetryOff = new(() => { Utils.DisableTelemetryEvents(); return true; });

    readonly Lock _lock = new();
    readonly Tokenizer _tokenizer;
    readonly string _prepared;

    ChatTemplate(string source, string origin, string? bosToken, string? eosToken)
    {
        Source = source;
        Origin = origin;
        BosToken = bosToken;
        EosToken = eosToken;
        _prepared = SpecialTokenPrelude(bosToken, eosToken) + JinjaWhitespace.Apply(source);
        _tokenizer = RenderingTokenizer();
    }

    /// <summary>The template text as the folder gives it.</summary>
    public string Source { get; }
    /// <summary>Where it came from (a file, or <c>file 'chat_template'</c>), for messages.</summary>
    public string Origin { get; }
    /// <summary>The template's <c>bos_token</c> (null: undefined in the template, as transformers leaves it).</summary>
    public string? BosToken { get; }
    /// <summary>The template's <c>eos_token</c> (null: undefined in the template).</summary>
    public string? EosToken { get; }

    /// <summary>
    /// The template of a model folder: <c>chat_template.jinja</c>, else <c>tokenizer_config.json</c>'s <c>chat_template</c>
    /// (a string, or a list of named templates of which <c>default</c> counts); null when the folder has none. A template
    /// that cannot render a one-message probe conversation throws <see cref="ChatTemplateException"/> naming the file and why.
    /// </summary>
    public static ChatTemplate? TryLoad(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (Find(folder) is not { } found) return null;
        var tokens = TokenizerFolder.Read(folder);
        return FromSource(found.Source, tokens.BosToken, tokens.EosToken, found.Origin);
    }

    /// <summary><see cref="TryLoad"/>, but a folder without a template throws <see cref="ChatTemplateException"/>.</summary>
    public static ChatTemplate Load(string folder) => TryLoad(folder) ?? throw new ChatTemplateException(
        $"{folder} has no chat template (neither {JinjaFile} nor '{TokenizerFolder.TokenizerConfig}' key 'chat_template').");

    /// <summary>
    /// A template given as text with the special tokens it sees (null: undefined); <paramref name="origin"/> names it in
    /// messages. Throws <see cref="ChatTemplateException"/> when it cannot render a one-message probe conversation.
    /// </summary>
    public static ChatTemplate FromSource(string source, string? bosToken, string? eosToken, string origin = "chat template")
    {
        ArgumentNullException.ThrowIfNull(source);
        var template = new ChatTemplate(source, origin, bosToken, eosToken);
        try { template.Render(Probe, addGenerationPrompt: true); }
        catch (ChatTemplateException e)
        {
            template.Dispose();
            throw new ChatTemplateException($"{origin}: the chat template cannot be rendered: {e.Message}");
        }
        return template;
    }

    /// <summary>
    /// Renders <paramref name="messages"/> (<c>messages</c>, each <c>{"role", "content"}</c>) with <c>add_generation_prompt</c>
    /// and, when given, <paramref name="toolsJson"/> (a JSON array, as <c>tools</c>). A <c>raise_exception</c> in the template
    /// or an error while rendering throws <see cref="ChatTemplateException"/> with the engine's first line.
    /// </summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string? toolsJson = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        string json = MessagesJson(messages);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            try { return _tokenizer.ApplyChatTemplate(ToolsPrelude(toolsJson) + _prepared, json, null, addGenerationPrompt); }
            catch (OnnxRuntimeGenAIException e) { throw new ChatTemplateException(FirstLine(e.Message)); }
        }
    }

    bool _disposed;

    /// <summary>Frees the native tokenizer.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            _tokenizer.Dispose();
        }
    }

    /// <summary>The folder's template text and where it came from; null when there is none.</summary>
    static (string Source, string Origin)? Find(string folder)
    {
        string jinja = Path.Combine(folder, JinjaFile);
        if (File.Exists(jinja)) return (File.ReadAllText(jinja), jinja);
        string config = Path.Combine(folder, TokenizerFolder.TokenizerConfig);
        using var doc = TokenizerFolder.ReadJson(config);
        if (doc is null || doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("chat_template", out var t)) return null;
        string origin = $"{config} 'chat_template'";
        return t.ValueKind switch
        {
            JsonValueKind.String => (t.GetString()!, origin),
            JsonValueKind.Array => t.EnumerateArray()
                .Where(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String && n.GetString() == "default")
                .Select(e => e.TryGetProperty("template", out var s) && s.ValueKind == JsonValueKind.String ? s.GetString() : null)
                .FirstOrDefault() is { } named ? (named, origin + " (default)")
                : throw new ChatTemplateException($"{origin} is a list without a template named 'default'."),
            JsonValueKind.Null => null,
            _ => throw new ChatTemplateException($"{origin} must be a string or a list of {{\"name\", \"template\"}} objects."),
        };
    }

    /// <summary>
    /// Sets <c>bos_token</c>/<c>eos_token</c> as transformers passes them: the folder's strings, or undefined when it
    /// names none (GenAI would otherwise put its own defaults, <c>&lt;s&gt;</c>/<c>&lt;/s&gt;</c>, there). Renders nothing.
    /// </summary>
    static string SpecialTokenPrelude(string? bos, string? eos) =>
        $"{{%- set bos_token = {JinjaValue(bos)} %}}{{%- set eos_token = {JinjaValue(eos)} %}}";

    /// <summary>A Jinja string literal, or a name no template defines (an undefined value) for null.</summary>
    static string JinjaValue(string? s) => s is null ? "__rlhf_undefined__" : JinjaString(s);

    /// <summary>
    /// A GenAI tokenizer used only for its template engine. GenAI 0.18 builds one from a folder with <c>genai_config.json</c>
    /// (model.context_length > 0), <c>tokenizer_config.json</c> and a parseable <c>tokenizer.json</c>; it reads them when it is
    /// made, so the scratch folder is deleted at once.
    /// </summary>
    static Tokenizer RenderingTokenizer()
    {
        _ = TelemetryOff.Value;
        var scratch = Directory.CreateTempSubdirectory("rlhf-chat-");
        try
        {
            File.WriteAllText(Path.Combine(scratch.FullName, "genai_config.json"), """{"model": {"context_length": 1}}""");
            File.WriteAllText(Path.Combine(scratch.FullName, TokenizerFolder.TokenizerConfig), "{}");
            File.WriteAllText(Path.Combine(scratch.FullName, TokenizerFolder.TokenizerJson),
                """{"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": {}, "merges": []}}""");
            return new Tokenizer(scratch.FullName);
        }
        finally { scratch.Delete(recursive: true); }
    }

    static string MessagesJson(IReadOnlyList<ChatMessage> messages)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            foreach (var m in messages)
            {
                w.WriteStartObject();
                w.WriteString("role", m.Role);
                w.WriteString("content", m.Content);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>
    /// Sets <c>tools</c> (and <c>documents</c>) as transformers passes them: the given array, or none. Not through
    /// GenAI's own tools argument: GenAI 0.18 rewrites that for Llama-3-style templates (measured: it drops the
    /// <c>{"type": "function", "function": ...}</c> wrapper and flattens <c>parameters</c>), which transformers does not.
    /// </summary>
    static string ToolsPrelude(string? toolsJson)
    {
        if (toolsJson is null) return "{%- set tools = none %}{%- set documents = none %}";
        JsonDocument doc;
        try { doc = JsonDocument.Parse(toolsJson); }
        catch (JsonException e) { throw new ChatTemplateException("'tools' is not valid JSON: " + e.Message); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Array) throw new ChatTemplateException("'tools' must be a JSON array.");
            var literal = new StringBuilder("{%- set tools = ");
            JinjaLiteral(doc.RootElement, literal);
            return literal.Append(" %}{%- set documents = none %}").ToString();
        }
    }

    /// <summary>A JSON value as a Jinja literal: objects and arrays as dicts and lists (order kept), null as none.</summary>
    static void JinjaLiteral(JsonElement e, StringBuilder s)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                s.Append('{');
                bool first = true;
                foreach (var p in e.EnumerateObject())
                {
                    if (!first) s.Append(", ");
                    first = false;
                    s.Append(JinjaString(p.Name)).Append(": ");
                    JinjaLiteral(p.Value, s);
                }
                s.Append('}');
                break;
            case JsonValueKind.Array:
                s.Append('[');
                int i = 0;
                foreach (var item in e.EnumerateArray())
                {
                    if (i++ > 0) s.Append(", ");
                    JinjaLiteral(item, s);
                }
                s.Append(']');
                break;
            case JsonValueKind.String: s.Append(JinjaString(e.GetString()!)); break;
            case JsonValueKind.Number: s.Append(e.GetRawText()); break;
            case JsonValueKind.True: s.Append("true"); break;
            case JsonValueKind.False: s.Append("false"); break;
            default: s.Append("none"); break;
        }
    }

    /// <summary>A single-quoted Jinja string literal of <paramref name="text"/>.</summary>
    static string JinjaString(string text) => "'" + text
        .Replace("\\", "\\\\", StringComparison.Ordinal).Replace("'", "\\'", StringComparison.Ordinal)
        .Replace("\n", "\\n", StringComparison.Ordinal).Replace("\r", "\\r", StringComparison.Ordinal).Replace("\t", "\\t", StringComparison.Ordinal) + "'";

    static string FirstLine(string message)
    {
        int end = message.IndexOf('\n');
        return (end < 0 ? message : message[..end]).Trim();
    }
}

/// <summary>A chat template that cannot be found, parsed or rendered (a <c>raise_exception</c> included); the message says why in one line.</summary>
public sealed class ChatTemplateException(string message) : Exception(message);
