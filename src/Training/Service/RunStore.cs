using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Export;
using Rlhf.Training.Common;

namespace Rlhf.Training.Service;

/// <summary>
/// The durable side of the queue: one folder per run under the runs folder with <c>run.json</c> (the record, rewritten
/// atomically on every change), <c>metrics.jsonl</c> (one line per step event, appended) and <c>out/</c> (the stage's
/// output folder, which the artifact endpoints serve).
/// </summary>
public sealed class RunStore(string runsDir)
{
    /// <summary>The runs folder.</summary>
    public string RunsDir { get; } = Path.GetFullPath(runsDir);

    /// <summary>The folder of run <paramref name="id"/>.</summary>
    public string RunDir(string id) => Path.Combine(RunsDir, id);

    /// <summary>The stage output folder of run <paramref name="id"/>.</summary>
    public string OutDir(string id) => Path.Combine(RunsDir, id, "out");

    /// <summary>Writes the record atomically.</summary>
    public void Save(RunRecord run)
    {
        Directory.CreateDirectory(RunDir(run.Id));
        AtomicFile.WriteAllText(Path.Combine(RunDir(run.Id), "run.json"), JsonSerializer.Serialize(run, ConfigLoader.Json));
    }

    /// <summary>Every stored record (a folder without a readable run.json is skipped).</summary>
    public List<RunRecord> LoadAll()
    {
        Directory.CreateDirectory(RunsDir);
        var runs = new List<RunRecord>();
        foreach (string dir in Directory.EnumerateDirectories(RunsDir))
        {
            string file = Path.Combine(dir, "run.json");
            if (!File.Exists(file)) continue;
            try { runs.Add(JsonSerializer.Deserialize<RunRecord>(File.ReadAllText(file), ConfigLoader.Json)!); }
            catch (JsonException) { }   // not a run record
        }
        return runs;
    }

    /// <summary>Appends one step event (a line of JSON).</summary>
    public void AppendMetrics(string id, JsonObject row)
    {
        using var f = new FileStream(Path.Combine(RunDir(id), "metrics.jsonl"), FileMode.Append, FileAccess.Write, FileShare.Read);
        f.Write(System.Text.Encoding.UTF8.GetBytes(row.ToJsonString() + "\n"));
    }

    /// <summary>The stored step events, oldest first (a torn last line from a kill is skipped).</summary>
    public List<JsonObject> ReadMetrics(string id)
    {
        string file = Path.Combine(RunDir(id), "metrics.jsonl");
        var rows = new List<JsonObject>();
        if (!File.Exists(file)) return rows;
        foreach (string line in File.ReadLines(file))
        {
            try { if (JsonNode.Parse(line) is JsonObject o) rows.Add(o); }
            catch (JsonException) { }
        }
        return rows;
    }
}
