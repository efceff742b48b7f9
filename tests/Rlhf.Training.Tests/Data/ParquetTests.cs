using System.Text.Json.Serialization;
using Parquet.Serialization;
using Rlhf.Training.Data;

namespace Rlhf.Training.Tests.Data;

/// <summary>Every record kind loads from Parquet files written by Parquet.Net's own writer, with the CSV column names.</summary>
public sealed class ParquetTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-parquet-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    string Write<T>(string name, IEnumerable<T> rows)
    {
        string path = Path.Combine(_dir, name);
        using (var fs = File.Create(path)) ParquetSerializer.SerializeAsync(rows, fs).GetAwaiter().GetResult();
        return path;
    }

    sealed class SftRow
    {
        [JsonPropertyName("prompt")] public string? Prompt { get; set; }
        [JsonPropertyName("response")] public string? Response { get; set; }
        [JsonPropertyName("source")] public int Source { get; set; }   // an extra column is ignored
    }

    sealed class PairRow
    {
        [JsonPropertyName("prompt")] public string? Prompt { get; set; }
        [JsonPropertyName("chosen")] public string? Chosen { get; set; }
        [JsonPropertyName("rejected")] public string? Rejected { get; set; }
    }

    sealed class RankedListRow
    {
        [JsonPropertyName("prompt")] public string? Prompt { get; set; }
        [JsonPropertyName("responses")] public List<string>? Responses { get; set; }
        [JsonPropertyName("ranking")] public List<long>? Ranking { get; set; }
    }

    sealed class RankedJsonRow
    {
        [JsonPropertyName("prompt")] public string? Prompt { get; set; }
        [JsonPropertyName("responses")] public string? Responses { get; set; }
        [JsonPropertyName("ranking")] public string? Ranking { get; set; }
    }

    sealed class PromptRow
    {
        [JsonPropertyName("prompt")] public string? Prompt { get; set; }
    }

    sealed class TextRow
    {
        [JsonPropertyName("text")] public string? Text { get; set; }
    }

    [Fact]
    public void EveryRecordKindReadsFromParquet()
    {
        string sft = Write("sft.parquet", new[] { new SftRow { Prompt = "The soup", Response = "was great.", Source = 3 }, new SftRow { Prompt = "Our room", Response = "was small." } });
        Assert.Equal([new SftExample("The soup", "was great."), new SftExample("Our room", "was small.")], DataFiles.ReadSft(sft).Records);

        string pairs = Write("pairs.parquet", new[] { new PairRow { Prompt = "The film", Chosen = "was fun.", Rejected = "was bad." } });
        Assert.Equal([new PreferencePair("The film", "was fun.", "was bad.")], DataFiles.ReadPreferences(pairs).Records);

        var expected = new RankedExample("The staff", ["were kind.", "were rude.", "were there."], [0, 2, 1]);
        string lists = Write("ranked.parquet", new[] { new RankedListRow { Prompt = "The staff", Responses = ["were kind.", "were rude.", "were there."], Ranking = [0, 2, 1] } });
        Assert.Equal([expected], DataFiles.ReadRanked(lists).Records);
        string json = Write("ranked_json.parquet", new[] { new RankedJsonRow { Prompt = "The staff", Responses = """["were kind.", "were rude.", "were there."]""", Ranking = "[0, 2, 1]" } });
        Assert.Equal([expected], DataFiles.ReadRanked(json).Records);

        string prompts = Write("prompts.parquet", new[] { new PromptRow { Prompt = "The pasta" }, new PromptRow { Prompt = "This hotel" } });
        Assert.Equal(["The pasta", "This hotel"], DataFiles.ReadPrompts(prompts).Records.Select(p => p.Prompt));

        string texts = Write("ptx.parquet", new[] { new TextRow { Text = "The soup was great." } });
        Assert.Equal(["The soup was great."], DataFiles.ReadTexts(texts).Records.Select(t => t.Text));
    }

    [Fact]
    public void BadRowsAndMissingColumnsAreNamed()
    {
        string sft = Write("bad.parquet", new[] { new SftRow { Prompt = "The soup", Response = "was great." }, new SftRow { Prompt = null, Response = "no prompt" } });
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(sft));
        Assert.Equal(2, e.Line);                                     // the 1-based row
        Assert.Contains("empty prompt", e.Problem);
        Assert.Single(DataFiles.ReadSft(sft, skipMalformed: true).Records);

        string ranked = Write("bad_ranked.parquet", new[] { new RankedListRow { Prompt = "p", Responses = ["a", "b"], Ranking = [0, 0] } });
        Assert.Contains("not a permutation", Assert.Throws<DataFileException>(() => DataFiles.ReadRanked(ranked)).Problem);

        string prompts = Write("no_column.parquet", new[] { new TextRow { Text = "x" } });
        Assert.Contains("no column 'prompt'", Assert.Throws<InvalidDataException>(() => DataFiles.ReadPrompts(prompts)).Message);

        string notParquet = Path.Combine(_dir, "junk.parquet");
        File.WriteAllText(notParquet, "prompt\nhello\n");
        Assert.Contains("not a readable Parquet file", Assert.Throws<InvalidDataException>(() => DataFiles.ReadPrompts(notParquet)).Message);
    }
}
