using Rlhf.Training.Data;

namespace Rlhf.Training.Tests.Data;

public sealed class DataFilesTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "rlhf-data-tests-" + Guid.NewGuid().ToString("N"));

    public DataFilesTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string PathOf(string name) => Path.Combine(_dir, name);

    static readonly string[] Tricky =
    [
        "plain", "with, comma", "with \"quotes\"", "line\nbreak", "crlf\r\nbreak", "  spaces  ", "-starts with dash",
        "=SUM(A1)", "unicode: café, 東京, emoji 🙂", "[\"looks\", \"like json\"]", "tab\there", "",
    ];

    [Theory]
    [InlineData("sft.csv")]
    [InlineData("sft.jsonl")]
    public void SftRoundTrip(string name)
    {
        var records = Tricky.Where(t => t.Length > 0).Select((t, i) => new SftExample("prompt " + t, t + " " + i)).ToArray();
        DataFiles.WriteSft(PathOf(name), records);
        var read = DataFiles.ReadSft(PathOf(name));
        Assert.Equal(records, read.Records);
        Assert.Equal(0, read.Skipped);
    }

    [Theory]
    [InlineData("pairs.csv")]
    [InlineData("pairs.jsonl")]
    public void PreferenceRoundTrip(string name)
    {
        var records = Tricky.Select(t => new PreferencePair("p," + t, t, "rejected " + t)).ToArray();
        DataFiles.WritePreferences(PathOf(name), records);
        Assert.Equal(records, DataFiles.ReadPreferences(PathOf(name)).Records);
    }

    [Theory]
    [InlineData("ranked.csv")]
    [InlineData("ranked.json")]
    public void RankedRoundTrip(string name)
    {
        var records = new[]
        {
            new RankedExample("p1", Tricky, Enumerable.Range(0, Tricky.Length).Reverse().ToArray()),
            new RankedExample("p2, \"q\"", ["a", "b"], [1, 0]),
        };
        DataFiles.WriteRanked(PathOf(name), records);
        Assert.Equal(records, DataFiles.ReadRanked(PathOf(name)).Records);
    }

    [Theory]
    [InlineData("prompts.csv")]
    [InlineData("prompts.jsonl")]
    public void PromptRoundTrip(string name)
    {
        var records = Tricky.Where(t => t.Length > 0).Select(t => new PromptExample(t)).ToArray();
        DataFiles.WritePrompts(PathOf(name), records);
        Assert.Equal(records, DataFiles.ReadPrompts(PathOf(name)).Records);
    }

    [Fact]
    public void CsvHasTheDocumentedHeaderAndJsonArraysInCells()
    {
        DataFiles.WriteRanked(PathOf("r.csv"), [new RankedExample("p", ["a", "b"], [1, 0])]);
        string[] lines = File.ReadAllLines(PathOf("r.csv"));
        Assert.Equal("prompt,responses,ranking", lines[0]);
        Assert.Equal("p,\"[\"\"a\"\",\"\"b\"\"]\",\"[1,0]\"", lines[1]);
        DataFiles.WriteSft(PathOf("s.jsonl"), [new SftExample("p", "r")]);
        Assert.Equal("{\"prompt\":\"p\",\"response\":\"r\"}", File.ReadAllLines(PathOf("s.jsonl"))[0]);
    }

    const string BadSftCsv =
        "prompt,response\n"      // 1
        + "a,b\n"                // 2
        + "\"multi\n"            // 3
        + "line\",c\n"           // 4
        + ",empty prompt\n"      // 5
        + "x,y,z\n"              // 6
        + "\n"                   // 7 (empty line, skipped)
        + "ok,fine\n"            // 8
        + "only one field\n";    // 9

    [Fact]
    public void MalformedCsvRowsReportFileAndLine()
    {
        string path = PathOf("bad.csv");
        File.WriteAllText(path, BadSftCsv);
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path));
        Assert.Equal(5, e.Line);
        Assert.StartsWith($"{path}:5: empty prompt", e.Message);

        File.WriteAllText(path, BadSftCsv.Replace(",empty prompt\n", "p,r\n"));
        e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path));
        Assert.Equal(6, e.Line);
        Assert.Contains("expected 2 fields", e.Message);

        var read = DataFiles.ReadSft(path, skipMalformed: true);
        Assert.Equal(["b", "c", "r", "fine"], read.Records.Select(r => r.Response));
        Assert.Equal(2, read.Skipped);
    }

    [Fact]
    public void ResponsesToScoreMayBeEmptyButDemonstrationsMayNot()
    {
        string path = PathOf("responses.csv");
        File.WriteAllText(path, "prompt,response\nThe soup was,\nThe soup was,hot.\n");
        Assert.Equal(["", "hot."], DataFiles.ReadResponses(path).Records.Select(r => r.Response));
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path));
        Assert.Equal(2, e.Line);
        Assert.Contains("empty response", e.Message);
    }

    [Fact]
    public void SkipFlagCountsEveryBadRow()
    {
        string path = PathOf("bad.csv");
        File.WriteAllText(path, BadSftCsv);
        var read = DataFiles.ReadSft(path, skipMalformed: true);
        Assert.Equal(["b", "c", "fine"], read.Records.Select(r => r.Response));
        Assert.Equal(3, read.Skipped);
    }

    [Fact]
    public void MalformedRankedCsvRowsReportFileAndLine()
    {
        string path = PathOf("ranked.csv");
        string header = "prompt,responses,ranking\n";
        string good = "p,\"[\"\"a\"\",\"\"b\"\"]\",\"[0,1]\"\n";
        File.WriteAllText(path, header + good + "p,\"[\"\"a\"\",\"\"b\"\"]\",\"[0,0]\"\n");
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadRanked(path));
        Assert.Equal(3, e.Line);
        Assert.Contains("not a permutation", e.Message);

        File.WriteAllText(path, header + good + good + "p,[not json,\"[0,1]\"\n");
        e = Assert.Throws<DataFileException>(() => DataFiles.ReadRanked(path));
        Assert.Equal(4, e.Line);

        File.WriteAllText(path, header + good + "p,\"[\"\"a\"\",\"\"b\"\"]\",\"[0,\"\"x\"\"]\"\n" + good);
        e = Assert.Throws<DataFileException>(() => DataFiles.ReadRanked(path));
        Assert.Equal(3, e.Line);
        Assert.Contains("'ranking'", e.Message);
        var read = DataFiles.ReadRanked(path, skipMalformed: true);
        Assert.Equal(2, read.Records.Count);
        Assert.Equal(1, read.Skipped);
    }

    [Fact]
    public void CsvHeaderWithoutARequiredColumnFailsEvenWhenSkipping()
    {
        string path = PathOf("pairs.csv");
        File.WriteAllText(path, "prompt,chosen\np,c\n");
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadPreferences(path, skipMalformed: true));
        Assert.Equal(1, e.Line);
        Assert.Contains("'rejected'", e.Message);
        File.WriteAllText(path, "");
        Assert.Throws<DataFileException>(() => DataFiles.ReadPreferences(path));
    }

    [Fact]
    public void CsvColumnsMayComeInAnyOrder()
    {
        string path = PathOf("pairs.csv");
        File.WriteAllText(path, "rejected,prompt,chosen\nr,p,c\n");
        Assert.Equal([new PreferencePair("p", "c", "r")], DataFiles.ReadPreferences(path).Records);
    }

    [Fact]
    public void MalformedCsvQuotingReportsTheLine()
    {
        string path = PathOf("quotes.csv");
        File.WriteAllText(path, "prompt\nfine\nab\"c\nalso fine\n");
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadPrompts(path));
        Assert.Equal(3, e.Line);
        var read = DataFiles.ReadPrompts(path, skipMalformed: true);
        Assert.Equal(["fine", "also fine"], read.Records.Select(r => r.Prompt));
        Assert.Equal(1, read.Skipped);
    }

    [Fact]
    public void MalformedJsonlLinesReportFileAndLine()
    {
        string path = PathOf("bad.jsonl");
        string[] lines =
        [
            "{\"prompt\": \"a\", \"response\": \"b\"}",   // 1
            "",                                            // 2
            "{\"prompt\": \"a\", \"response\": ",          // 3 bad JSON
            "{\"prompt\": \"a\"}",                         // 4 missing field
            "{\"prompt\": \"\", \"response\": \"b\"}",     // 5 empty prompt
            "[1, 2]",                                      // 6 not an object
            "{\"prompt\": 3, \"response\": \"b\"}",        // 7 wrong type
            "{\"prompt\": \"c\", \"response\": \"d\", \"extra\": 1}", // 8 fine (extra fields ignored)
        ];
        File.WriteAllText(path, string.Join('\n', lines) + "\n");
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path));
        Assert.Equal(3, e.Line);
        Assert.StartsWith($"{path}:3: not valid JSON", e.Message);

        var read = DataFiles.ReadSft(path, skipMalformed: true);
        Assert.Equal([new SftExample("a", "b"), new SftExample("c", "d")], read.Records);
        Assert.Equal(5, read.Skipped);

        File.WriteAllText(path, lines[0] + "\n" + lines[3] + "\n");
        e = Assert.Throws<DataFileException>(() => DataFiles.ReadSft(path));
        Assert.Equal(2, e.Line);
        Assert.Contains("missing field 'response'", e.Message);
    }

    [Fact]
    public void RankedJsonlValidatesTheRanking()
    {
        string path = PathOf("ranked.jsonl");
        File.WriteAllText(path,
            "{\"prompt\": \"p\", \"responses\": [\"a\", \"b\"], \"ranking\": [1, 0]}\n"
            + "{\"prompt\": \"p\", \"responses\": [\"a\", \"b\"], \"ranking\": [1, 1]}\n"
            + "{\"prompt\": \"p\", \"responses\": \"a\", \"ranking\": [1, 0]}\n");
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadRanked(path));
        Assert.Equal(2, e.Line);
        Assert.Contains("not a permutation", e.Message);
        var read = DataFiles.ReadRanked(path, skipMalformed: true);
        Assert.Single(read.Records);
        Assert.Equal(2, read.Skipped);
    }

    [Fact]
    public void UnknownExtensionIsRejected()
    {
        Assert.Throws<ArgumentException>(() => DataFiles.WriteSft(PathOf("x.txt"), []));
        Assert.Equal(DataFormat.Jsonl, DataFiles.FormatOf("a/b.JSONL"));
        Assert.Equal(DataFormat.Csv, DataFiles.FormatOf("b.csv"));
    }

    [Fact]
    public void WritesReplaceTheFileAndLeaveNoTemporaries()
    {
        string path = PathOf("sub/prompts.jsonl");
        DataFiles.WritePrompts(path, [new PromptExample("old"), new PromptExample("older")]);
        DataFiles.WritePrompts(path, [new PromptExample("new")]);
        Assert.Equal([new PromptExample("new")], DataFiles.ReadPrompts(path).Records);
        Assert.Equal(["prompts.jsonl"], Directory.GetFiles(PathOf("sub")).Select(Path.GetFileName));

        // A failing write leaves the old file as it was.
        IEnumerable<PromptExample> Failing()
        {
            yield return new PromptExample("partial");
            throw new InvalidOperationException("boom");
        }
        Assert.Throws<InvalidOperationException>(() => DataFiles.WritePrompts(path, Failing()));
        Assert.Equal([new PromptExample("new")], DataFiles.ReadPrompts(path).Records);
        Assert.Single(Directory.GetFiles(PathOf("sub")));
    }

    [Theory]
    [InlineData(DataFormat.Csv)]
    [InlineData(DataFormat.Jsonl)]
    public void WriteDefaultWritesEverySplit(DataFormat format)
    {
        var sizes = DefaultDataSizes.Tiny;
        var paths = DataSets.WriteDefault(PathOf("data"), seed: 1, sizes, format);
        Assert.Equal(sizes.SftTrain, DataFiles.ReadSft(paths.SftTrain).Records.Count);
        Assert.Equal(sizes.SftEval, DataFiles.ReadSft(paths.SftEval).Records.Count);
        Assert.Equal(sizes.RmPrompts, DataFiles.ReadPrompts(paths.RmPrompts).Records.Count);
        Assert.Equal(sizes.RmEvalPrompts, DataFiles.ReadPrompts(paths.RmEvalPrompts).Records.Count);
        Assert.Equal(sizes.PpoPrompts, DataFiles.ReadPrompts(paths.PpoPrompts).Records.Count);
        Assert.Equal(sizes.PpoEvalPrompts, DataFiles.ReadPrompts(paths.PpoEvalPrompts).Records.Count);
        Assert.Equal(sizes.Corpus, File.ReadAllLines(paths.Corpus).Length);
        Assert.Equal(DataSets.SftExamples(1, DataSets.SftTrainName, sizes.SftTrain), DataFiles.ReadSft(paths.SftTrain).Records);
        Assert.EndsWith(format == DataFormat.Csv ? ".csv" : ".jsonl", paths.SftTrain);
    }
}
