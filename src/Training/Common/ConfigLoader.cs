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

    /// <summary>Builds the config: defaults ← file ← overrides (later wins).</summary>
    public static T Load<T>(string? file, IEnumerable<string> overrides) where T : new()
    {
        JsonObject merged = JsonSerializer.SerializeToNode(new T(), Json)!.AsObject();
        var known = merged.Select(kv => kv.Key).ToHashSet();
        if (file is not null)
        {
            if (!File.Exists(file)) throw new FileNotFoundException($"Config file not found: {file}", file);
            JsonObject fromFile;
            try { fromFile = JsonNode.Parse(File.ReadAllText(file))!.AsObject(); }
            catch (Exception e) when (e is JsonException or InvalidOperationException or NullReferenceException)
            { throw new InvalidDataException($"{file}: not a JSON object ({e.Message})."); }
            foreach (var (key, value) in fromFile)
            {
                CheckKey(key, known, file);
                merged[key] = value?.DeepClone();
            }
        }
        foreach (string kv in overrides)
        {
            int eq = kv.IndexOf('=');
            if (eq <= 0) throw new ArgumentException($"Override '{kv}' must look like key=value (for example lr=3e-4).");
            string key = kv[..eq].Trim().Replace('-', '_');
            CheckKey(key, known, "--set");
            merged[key] = ParseValue(kv[(eq + 1)..]);
        }
        try { return merged.Deserialize<T>(Json)!; }
        catch (JsonException e) { throw new InvalidDataException($"Invalid {typeof(T).Name}: {e.Message}"); }
    }

    /// <summary>The config as indented snake_case JSON (written next to every stage output).</summary>
    public static string ToJson<T>(T config) => JsonSerializer.Serialize(config, Json);

    static void CheckKey(string key, HashSet<string> known, string source)
    {
        if (!known.Contains(key))
            throw new InvalidDataException($"{source}: unknown config key '{key}'. Known keys: {string.Join(", ", known.Order())}.");
    }

    static JsonNode? ParseValue(string text)
    {
        string t = text.Trim();
        try { return JsonNode.Parse(t); }
        catch (JsonException) { return JsonValue.Create(t); }   // bare strings: out=runs/x, decay=cosine
    }
}
