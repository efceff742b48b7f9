using System.Text.Json.Nodes;
using Rlhf.Training.Common;
using Rlhf.Training.Pipeline;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Tests.Common;

/// <summary>
/// docs/configuration.md lists, for each stage, exactly the keys its config record reads and writes, each once, with
/// the record's default; every listed key is accepted by an override.
/// </summary>
public sealed class ConfigDocsTests
{
    /// <summary>The keys a config record reads and writes: its snake_case JSON, as <see cref="ConfigLoader"/> builds it.</summary>
    static JsonObject Defaults<T>(T config) => JsonNode.Parse(ConfigLoader.ToJson(config))!.AsObject();

    /// <summary>The table rows of the "## <paramref name="stage"/>" section of docs/configuration.md.</summary>
    static (string Key, string[] Cells)[] Rows(string stage) =>
        DocsPages.TableRows(DocsPages.Section(DocsPages.Docs("configuration.md"), "## " + stage));

    /// <summary>
    /// The section's keys equal the record's, none twice, and each row's default cell (a JSON value in backticks, or
    /// "section" for a nested record) is the record's default.
    /// </summary>
    static void ListsExactlyTheRecordsKeys<T>(string stage, T config)
    {
        var rows = Rows(stage);
        JsonObject defaults = Defaults(config);
        Assert.True(rows.Length > 0, $"configuration.md's '{stage}' section has no key table");
        string[] twice = [.. rows.GroupBy(r => r.Key).Where(g => g.Count() > 1).Select(g => g.Key)];
        Assert.True(twice.Length == 0, $"configuration.md lists {stage} keys more than once: {string.Join(", ", twice)}");
        string[] missing = [.. defaults.Select(kv => kv.Key).Except(rows.Select(r => r.Key)).Order()];
        Assert.True(missing.Length == 0, $"configuration.md's {stage} table lacks {string.Join(", ", missing)}");
        string[] unknown = [.. rows.Select(r => r.Key).Except(defaults.Select(kv => kv.Key)).Order()];
        Assert.True(unknown.Length == 0, $"configuration.md's {stage} table names keys {typeof(T).Name} does not have: {string.Join(", ", unknown)}");
        foreach (var (key, cells) in rows)
        {
            JsonNode? expected = defaults[key];
            if (expected is JsonObject)
            {
                Assert.True(cells[0] == "section", $"{stage} key {key} is a section: its default cell should say 'section', not '{cells[0]}'");
                continue;
            }
            Assert.True(cells[0].Length > 2 && cells[0][0] == '`' && cells[0][^1] == '`', $"{stage} key {key}: the default cell '{cells[0]}' is not a `JSON value`");
            JsonNode? listed = JsonNode.Parse(cells[0][1..^1]);
            Assert.True(SameValue(expected, listed), $"{stage} key {key}: configuration.md says {cells[0]}, {typeof(T).Name} has {expected?.ToJsonString() ?? "null"}");
        }
    }

    /// <summary>JSON equality with numbers compared by value (3e-3 in the page, 0.003 in the record's JSON).</summary>
    static bool SameValue(JsonNode? a, JsonNode? b) => (a, b) switch
    {
        (null, null) => true,
        (JsonValue x, JsonValue y) when x.TryGetValue(out double dx) && y.TryGetValue(out double dy) => dx == dy,
        (JsonArray x, JsonArray y) => x.Count == y.Count && x.Zip(y).All(p => SameValue(p.First, p.Second)),
        _ => a is not null && b is not null && JsonNode.DeepEquals(a, b),
    };

    [Fact]
    public void SftKeys() => ListsExactlyTheRecordsKeys("SFT", new SftConfig());

    [Fact]
    public void RmKeys() => ListsExactlyTheRecordsKeys("RM", new RmConfig());

    [Fact]
    public void PpoKeys() => ListsExactlyTheRecordsKeys("PPO", new PpoConfig());

    [Fact]
    public void DpoKeys() => ListsExactlyTheRecordsKeys("DPO", new Rlhf.Training.Dpo.DpoConfig());

    [Fact]
    public void PipelineKeys() => ListsExactlyTheRecordsKeys("Pipeline", new PipelineConfig());

    /// <summary>Each listed key, set to its listed default by an override, loads (an unknown key would throw).</summary>
    static void EveryListedKeyLoads<T>(string stage, T config) where T : new()
    {
        JsonObject defaults = Defaults(config);
        foreach (var (key, _) in Rows(stage))
            ConfigLoader.Load<T>(null, [$"{key}={defaults[key]?.ToJsonString() ?? "null"}"]);
    }

    [Fact]
    public void EveryListedKeyIsAcceptedByAnOverride()
    {
        EveryListedKeyLoads("SFT", new SftConfig());
        EveryListedKeyLoads("RM", new RmConfig());
        EveryListedKeyLoads("PPO", new PpoConfig());
        EveryListedKeyLoads("DPO", new Rlhf.Training.Dpo.DpoConfig());
        EveryListedKeyLoads("Pipeline", new PipelineConfig());
    }
}
