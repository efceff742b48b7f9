using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace Rlhf.Training.Common;

/// <summary>
/// Loads a stage config (a sealed record with defaults) in three layers: the record's defaults, then a JSON file
/// (snake_case keys), then command-line overrides <c>key=value</c>. Unknown keys are errors that name the key and list
/// the known ones.
/// </summary>
public static class ConfigLoader
{
    /// <summary>JSON options shared by configs and summaries: snake_case names, enums as lower-case strings.</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,   // NaN where a figure does not exist
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    /// <summary>
    /// Builds the config: defaults ← file ← overrides (later wins). Nested sections (a pipeline's <c>sft</c>, <c>rm</c>)
    /// merge key by key, and an override reaches into them with a dotted key: <c>rm.lr=1e-3</c>.
    /// </summary>
    public static T Load<T>(string? file, IEnumerable<string> overrides) where T : new()
    {
        JsonObject? fromFile = null;
        if (file is not null)
        {
            string found = ShippedFiles.Find(file) ?? throw new FileNotFoundException($"Config file not found: {file}", file);   // models/... also next to the binary
            try { fromFile = JsonNode.Parse(File.ReadAllText(found))!.AsObject(); }
            catch (Exception e) when (e is JsonException or InvalidOperationException or NullReferenceException)
            { throw new InvalidDataException($"{file}: not a JSON object ({e.Message})."); }
        }
        return Build<T>(fromFile, file ?? "", overrides);
    }

    /// <summary>
    /// Builds the config from a JSON object (a request body's <c>config</c>) over the defaults, with the same errors as
    /// a config file: unknown keys name the key and list the known ones, <paramref name="source"/> says where it came from.
    /// </summary>
    public static T FromJson<T>(JsonObject json, string source) where T : new() => Build<T>(json, source, []);

    static T Build<T>(JsonObject? layer, string source, IEnumerable<string> overrides) where T : new()
    {
        JsonObject merged = JsonSerializer.SerializeToNode(new T(), Json)!.AsObject();
        if (layer is not null) Merge(merged, layer, source, "");
        foreach (string kv in overrides)
        {
            int eq = kv.IndexOf('=');
            if (eq <= 0) throw new ArgumentException($"Override '{kv}' must look like key=value (for example lr=3e-4).");
            string[] path = kv[..eq].Trim().Replace('-', '_').Split('.');
            JsonObject target = merged;
            for (int d = 0; d < path.Length - 1; d++)
            {
                CheckKey(path[d], target, "--set", string.Join('.', path[..d]));
                target = target[path[d]] as JsonObject
                    ?? throw new InvalidDataException($"--set: '{string.Join('.', path[..(d + 1)])}' is a value, not a section.");
            }
            CheckKey(path[^1], target, "--set", string.Join('.', path[..^1]));
            target[path[^1]] = ParseValue(kv[(eq + 1)..]);
        }
        try { return merged.Deserialize<T>(Json)!; }
        catch (JsonException e) { throw new InvalidDataException($"Invalid {typeof(T).Name}: {e.Message}"); }
    }

    static void Merge(JsonObject into, JsonObject from, string source, string prefix)
    {
        foreach (var (key, value) in from)
        {
            CheckKey(key, into, source, prefix);
            if (into[key] is JsonObject section && value is JsonObject sub) Merge(section, sub, source, prefix.Length == 0 ? key : $"{prefix}.{key}");
            else into[key] = value?.DeepClone();
        }
    }

    /// <summary>The config as indented snake_case JSON (written next to every stage output).</summary>
    public static string ToJson<T>(T config) => JsonSerializer.Serialize(config, Json);

    /// <summary>An enum value as config files spell it (snake_case: <c>dr_grpo</c>).</summary>
    public static string EnumName<T>(T value) where T : struct, Enum => JsonSerializer.Serialize(value, Json).Trim('"');

    static void CheckKey(string key, JsonObject known, string source, string section)
    {
        if (!known.ContainsKey(key))
            throw new InvalidDataException($"{source}: unknown config key '{(section.Length == 0 ? key : section + "." + key)}'. " +
                $"Known keys{(section.Length == 0 ? "" : $" of '{section}'")}: {string.Join(", ", known.Select(k => k.Key).Order())}.");
    }

    static JsonNode? ParseValue(string text)
    {
        string t = text.Trim();
        try { return JsonNode.Parse(t); }
        catch (JsonException) { return JsonValue.Create(t); }   // bare strings: out=runs/x, decay=cosine
    }
}
