using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsvHelper;
using Parquet.Serialization;

namespace Rlhf.Training.Data;

/// <summary>File formats of the data sets, chosen by extension: .csv → <see cref="Csv"/>;
/// .jsonl, .ndjson and .json → <see cref="Jsonl"/> (JSON Lines: one object per line); .parquet → <see cref="Parquet"/>
/// (read only; Parquet.Net).</summary>
public enum DataFormat { Csv, Jsonl, Parquet }

/// <summary>A data file row that cannot be read. The message is <c>{file}:{line}: {what is wrong and how to fix it}</c>.</summary>
public sealed class DataFileException : Exception
{
    public DataFileException(string file, long line, string problem)
        : base($"{file}:{line}: {problem}")
    {
        FilePath = file;
        Line = line;
        Problem = problem;
    }

    public string FilePath { get; }

    /// <summary>1-based line where the bad record starts (the header is line 1 of a CSV file).</summary>
    public long Line { get; }

    public string Problem { get; }
}

/// <summary>Records read from a file, and how many malformed rows were skipped (0 unless skipMalformed).</summary>
public sealed record DataRead<T>(IReadOnlyList<T> Records, int Skipped);

/// <summary>Reads and writes the record types of <see cref="SftExample"/>, <see cref="PreferencePair"/>,
/// <see cref="RankedExample"/> and <see cref="PromptExample"/> as CSV (header row; list columns hold a JSON array in
/// the cell) or JSON Lines (one object per line with the same field names; lists as JSON arrays):
/// <code>
/// prompt,response                  {"prompt": "...", "response": "..."}
/// prompt,chosen,rejected           {"prompt": "...", "chosen": "...", "rejected": "..."}
/// prompt,responses,ranking         {"prompt": "...", "responses": ["a", "b"], "ranking": [1, 0]}
/// prompt                           {"prompt": "..."}
/// </code>
/// SFT, preference and prompt files in JSONL or Parquet may also hold TRL's dataset formats (conversational rows keep
/// their messages; <see cref="RowShape"/>), detected from the first row, and any file's columns may be named otherwise
/// (<see cref="DatasetColumns"/>).
/// A malformed row throws <see cref="DataFileException"/> with file and line, or with <c>skipMalformed</c> is skipped
/// and counted. Writes go to a temporary file in the same folder that is then renamed over the target.</summary>
public static class DataFiles
{
    public static DataFormat FormatOf(string path)
    {
        string ext = Path.GetExtension(path).ToLowerInvariant();
        return ext switch
        {
            ".csv" => DataFormat.Csv,
            ".jsonl" or ".ndjson" or ".json" => DataFormat.Jsonl,
            ".parquet" => DataFormat.Parquet,
            _ => throw new ArgumentException(
                $"{path}: unknown data file extension '{ext}'; use .csv, .jsonl (JSON Lines) or .parquet", nameof(path)),
        };
    }

    /// <summary>SFT demonstrations: flat <c>prompt,response</c> (CSV, JSONL, Parquet) or, in JSONL/Parquet, TRL's
    /// prompt/completion (strings, or lists of messages) and <c>messages</c> rows (<see cref="RowShape"/>).
    /// <paramref name="columns"/> names the file's columns for our fields.</summary>
    public static DataRead<SftExample> ReadSft(string path, bool skipMalformed = false, DatasetColumns? columns = null) =>
        ReadShaped(path, RecordKind.Sft, Schemas.Sft, RowShapes.Sft, skipMalformed, columns);

    /// <summary>prompt,response rows to score: like <see cref="ReadSft"/>, but an empty response is a valid answer and an
    /// empty prompt a standalone text (what a classifier-style reward model scores).</summary>
    public static DataRead<SftExample> ReadResponses(string path, bool skipMalformed = false) =>
        Read(path, Schemas.Response, skipMalformed);

    /// <summary>Preference pairs: flat <c>prompt,chosen,rejected</c> (CSV, JSONL, Parquet) or, in JSONL/Parquet, TRL's
    /// conversational pairs with an explicit or implicit prompt (<see cref="RowShape"/>).</summary>
    public static DataRead<PreferencePair> ReadPreferences(string path, bool skipMalformed = false, DatasetColumns? columns = null) =>
        ReadShaped(path, RecordKind.Preference, Schemas.Preference, RowShapes.Preference, skipMalformed, columns);

    /// <summary>prompt,chosen,rejected rows to score: like <see cref="ReadPreferences"/>, but the prompt may be empty.</summary>
    public static DataRead<PreferencePair> ReadPreferencesToScore(string path, bool skipMalformed = false) =>
        Read(path, Schemas.ScoredPreference, skipMalformed);

    public static DataRead<RankedExample> ReadRanked(string path, bool skipMalformed = false) =>
        Read(path, Schemas.Ranked, skipMalformed);

    /// <summary>Prompts: a <c>prompt</c> string (CSV, JSONL, Parquet) or, in JSONL/Parquet, a list of messages.</summary>
    public static DataRead<PromptExample> ReadPrompts(string path, bool skipMalformed = false, DatasetColumns? columns = null) =>
        ReadShaped(path, RecordKind.Prompt, Schemas.Prompt, (_, row) => RowShapes.Prompt(row), skipMalformed, columns);

    /// <summary>
    /// Pretraining documents: a plain-text file (<c>.txt</c>; each non-empty line a document) or CSV/JSONL/Parquet with a
    /// <c>text</c> column.
    /// </summary>
    public static DataRead<TextExample> ReadTexts(string path, bool skipMalformed = false)
    {
        if (!Path.GetExtension(path).Equals(".txt", StringComparison.OrdinalIgnoreCase)) return Read(path, Schemas.Text, skipMalformed);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: data file not found", path);
        return new DataRead<TextExample>([.. File.ReadLines(path, Encoding.UTF8).Where(l => !string.IsNullOrWhiteSpace(l)).Select(l => new TextExample(l))], 0);
    }

    public static void WriteSft(string path, IEnumerable<SftExample> records) => Write(path, Schemas.Sft, records);

    public static void WritePreferences(string path, IEnumerable<PreferencePair> records) =>
        Write(path, Schemas.Preference, records);

    public static void WriteRanked(string path, IEnumerable<RankedExample> records) => Write(path, Schemas.Ranked, records);

    public static void WritePrompts(string path, IEnumerable<PromptExample> records) => Write(path, Schemas.Prompt, records);

    /// <summary>Writes plain text, one line per item (e.g. a tokenizer corpus), atomically. Items must not contain
    /// line breaks.</summary>
    public static void WriteLines(string path, IEnumerable<string> lines) =>
        Rlhf.Export.AtomicFile.WriteStream(path, stream =>
        {
            using var w = new StreamWriter(stream, new UTF8Encoding(false), bufferSize: -1, leaveOpen: true);
            foreach (string line in lines)
            {
                if (line.Contains('\n') || line.Contains('\r'))
                    throw new ArgumentException("a line of a text file cannot contain a line break", nameof(lines));
                w.Write(line);
                w.Write('\n');
            }
        });

    // ---- reading ----------------------------------------------------------------------------------------------

    static DataRead<T> Read<T>(string path, Schema<T> schema, bool skipMalformed)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: data file not found", path);
        return FormatOf(path) switch
        {
            DataFormat.Csv => ReadCsv(path, schema, skipMalformed, DatasetColumns.Default),
            DataFormat.Jsonl => ReadJsonl(path, schema, skipMalformed),
            DataFormat.Parquet => ReadParquet(path, schema, skipMalformed),
            _ => throw new ArgumentOutOfRangeException(nameof(path)),
        };
    }

    /// <summary>
    /// Rows whose shape the first row decides (<see cref="RowShapes.Detect"/>): CSV holds the flat shape only; JSONL and
    /// Parquet rows (as JSON objects under our field names) may also be conversational. Flat rows parse as the
    /// <paramref name="flat"/> schema's cells, conversational ones with <paramref name="conversational"/>. A row of another
    /// shape than the first is malformed; a Parquet file whose columns fit no shape fails as a whole.
    /// </summary>
    static DataRead<T> ReadShaped<T>(
        string path, RecordKind kind, Schema<T> flat, Func<RowShape, JsonObject, (T? Record, string? Problem)> conversational,
        bool skipMalformed, DatasetColumns? columns)
    {
        columns ??= DatasetColumns.Default;
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: data file not found", path);
        DataFormat format = FormatOf(path);
        if (format == DataFormat.Csv) return ReadCsv(path, flat, skipMalformed, columns);
        var rows = format == DataFormat.Jsonl ? JsonlRows(path, flat.Example) : ParquetRows(path);
        var records = new List<T>();
        int skipped = 0;
        RowShape? shape = null;
        foreach (var (line, raw, readProblem) in rows)
        {
            string? problem = readProblem;
            T? record = default;
            if (problem is null)
            {
                JsonObject row = Mapped(raw!, columns);
                if (shape is null)
                {
                    (shape, problem) = RowShapes.Detect(kind, row);
                    if (problem is not null && format == DataFormat.Parquet)
                        throw new InvalidDataException($"{path}: no column '{flat.Columns.Select(columns.ColumnOf).FirstOrDefault(c => !raw!.ContainsKey(c))}' "
                            + $"for the flat shape {flat.Example}, and the columns fit no other shape: {problem}.");
                }
                else problem = RowShapes.ShapeMismatch(kind, shape.Value, row);
                if (problem is null) (record, problem) = ParseRow(shape!.Value, row, flat, conversational);
            }
            if (problem is null) records.Add(record!);
            else if (skipMalformed) skipped++;
            else throw new DataFileException(path, line, problem);
        }
        return new DataRead<T>(records, skipped);
    }

    static (T? Record, string? Problem) ParseRow<T>(
        RowShape shape, JsonObject row, Schema<T> flat, Func<RowShape, JsonObject, (T? Record, string? Problem)> conversational)
    {
        if (!RowShapes.IsFlat(shape)) return conversational(shape, row);
        var (cells, problem) = RowShapes.Cells(shape, row);
        return problem is null ? flat.Parse(cells!) : (default, problem);
    }

    /// <summary>The row under our field names: the file's column for each field (<see cref="DatasetColumns"/>) renamed to
    /// the field; a column carrying one of our names that is mapped away is dropped; other columns keep their names.</summary>
    static JsonObject Mapped(JsonObject raw, DatasetColumns columns)
    {
        if (columns == DatasetColumns.Default) return raw;
        var row = new JsonObject();
        foreach (var (key, value) in raw.ToArray())
        {
            if (columns.FieldOf(key) is not { } field) continue;
            raw.Remove(key);
            row[field] = value;
        }
        return row;
    }

    /// <summary>Each non-blank line of a JSON Lines file as an object, or why it is not one.</summary>
    static IEnumerable<(long Line, JsonObject? Row, string? Problem)> JsonlRows(string path, string example)
    {
        long line = 0;
        foreach (string text in File.ReadLines(path, Encoding.UTF8))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            JsonNode? node = null;
            string? problem = null;
            try { node = JsonNode.Parse(text); }
            catch (JsonException e) { problem = $"not valid JSON ({e.Message}); each line must be one object like {example}"; }
            if (problem is null && node is not JsonObject)
                problem = $"expected a JSON object like {example} but found a {(node is null ? "null" : node.GetValueKind().ToString())}";
            yield return (line, problem is null ? (JsonObject)node! : null, problem);
        }
    }

    /// <summary>Each row of a Parquet file as a JSON object (strings as strings, lists as arrays, structs as objects:
    /// a Hugging Face <c>list&lt;struct&lt;content, role&gt;&gt;</c> column becomes a list of messages); 1-based row numbers.</summary>
    static IEnumerable<(long Line, JsonObject? Row, string? Problem)> ParquetRows(string path)
    {
        var table = ReadParquetTable(path);
        string[] columns = [.. table.Schema.Fields.Select(f => f.Name)];
        for (int row = 0; row < table.Data.Count; row++)
        {
            var obj = new JsonObject();
            foreach (string column in columns)                   // a null cell is absent from the row: present it as null
                obj[column] = table.Data[row].TryGetValue(column, out object? value) ? ParquetJson(value) : null;
            yield return (row + 1, obj, null);
        }
    }

    /// <summary>A Parquet.Net untyped value as JSON.</summary>
    static JsonNode? ParquetJson(object? v) => v switch
    {
        null => null,
        string s => JsonValue.Create(s),
        ReadOnlyMemory<char> m => JsonValue.Create(m.ToString()),
        bool b => JsonValue.Create(b),
        System.Collections.IDictionary d => new JsonObject(d.Keys.Cast<object>().Select(k =>
            KeyValuePair.Create(k.ToString()!, ParquetJson(d[k])))),
        System.Collections.IEnumerable items => new JsonArray([.. items.Cast<object?>().Select(ParquetJson)]),
        IConvertible c when c is sbyte or byte or short or ushort or int or uint or long or ulong => JsonValue.Create(Convert.ToInt64(c)),
        IConvertible c when c is float or double or decimal => JsonValue.Create(Convert.ToDouble(c)),
        _ => JsonValue.Create(v.ToString()),
    };

    static DataRead<T> ReadCsv<T>(string path, Schema<T> schema, bool skipMalformed, DatasetColumns columns)
    {
        var malformed = new Queue<CsvMalformedRecord>();
        var options = CsvReaderOptions.Default with
        {
            Separator = ',',
            HasHeader = true,
            TrackLineNumbers = true,
            MalformedData = CsvMalformedDataHandling.Skip,
            FieldCountMismatch = CsvFieldCountHandling.Allow,
            OnMalformedRecord = r => malformed.Enqueue(r),
        };
        var records = new List<T>();
        int skipped = 0;
        using var csv = CsvReader.FromFile(path, options);

        void Fail(long line, string problem)
        {
            if (!skipMalformed) throw new DataFileException(path, line, problem);
            skipped++;
        }

        void FlushMalformed(long beforeLine)
        {
            while (malformed.Count > 0 && malformed.Peek().LineNumber < beforeLine)
            {
                var m = malformed.Dequeue();
                Fail(m.LineNumber, $"malformed CSV quoting ({m.Reason}); put fields with commas, quotes or line "
                    + "breaks in double quotes and double the quotes inside them (\"\")");
            }
        }

        string[] header = csv.Headers.ToArray();
        if (header.Length == 0 || header.All(h => h.Length == 0))
            throw new DataFileException(path, 1, $"empty file; the first line must be the header '{string.Join(',', schema.Columns)}'");
        var index = new int[schema.Columns.Length];
        for (int c = 0; c < schema.Columns.Length; c++)
        {
            string column = columns.ColumnOf(schema.Columns[c]);
            index[c] = Array.IndexOf(header, column);
            if (index[c] < 0)
                throw new DataFileException(path, 1, $"the header has no column '{column}' "
                    + $"(found '{string.Join(',', header)}'); the header must be '{string.Join(',', schema.Columns.Select(columns.ColumnOf))}'"
                    + " (CSV holds flat rows; conversations go in JSONL or Parquet)");
        }

        var values = new string[schema.Columns.Length];
        while (csv.Read())
        {
            long line = csv.LineNumber;
            FlushMalformed(line);
            if (csv.FieldCount != header.Length)
            {
                Fail(line, $"expected {header.Length} fields ({string.Join(',', header)}) but found {csv.FieldCount}; "
                    + "quote fields that contain commas, and give every column a value");
                continue;
            }
            for (int c = 0; c < values.Length; c++) values[c] = csv.GetString(index[c]);
            var (record, problem) = schema.Parse(values);
            if (problem is not null) Fail(line, problem);
            else records.Add(record!);
        }
        FlushMalformed(long.MaxValue);
        return new DataRead<T>(records, skipped);
    }

    static DataRead<T> ReadJsonl<T>(string path, Schema<T> schema, bool skipMalformed)
    {
        var records = new List<T>();
        int skipped = 0;
        long line = 0;
        var values = new string[schema.Columns.Length];
        foreach (string text in File.ReadLines(path, Encoding.UTF8))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            string? problem = null;
            T? record = default;
            try
            {
                using var doc = JsonDocument.Parse(text);
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                    problem = $"expected a JSON object like {schema.Example} but found a {doc.RootElement.ValueKind}";
                else
                {
                    for (int c = 0; c < schema.Columns.Length && problem is null; c++)
                    {
                        string column = schema.Columns[c];
                        if (!doc.RootElement.TryGetProperty(column, out JsonElement v))
                            problem = $"missing field '{column}'; each line must be an object like {schema.Example}";
                        else if (schema.Kinds[c] == ColumnKind.Text)
                        {
                            if (v.ValueKind != JsonValueKind.String)
                                problem = $"field '{column}' must be a JSON string but is a {v.ValueKind}";
                            else values[c] = v.GetString()!;
                        }
                        else if (v.ValueKind != JsonValueKind.Array)
                            problem = $"field '{column}' must be a JSON array but is a {v.ValueKind}; write it like {schema.ExampleOf(c)}";
                        else values[c] = v.GetRawText();
                    }
                    if (problem is null) (record, problem) = schema.Parse(values);
                }
            }
            catch (JsonException e)
            {
                problem = $"not valid JSON ({e.Message}); each line must be one object like {schema.Example}";
            }
            if (problem is null) records.Add(record!);
            else if (skipMalformed) skipped++;
            else throw new DataFileException(path, line, problem);
        }
        return new DataRead<T>(records, skipped);
    }

    /// <summary>
    /// Parquet (e.g. a Hugging Face dataset file): columns named as the CSV header; text columns are strings, list
    /// columns either Parquet lists (of strings / integers) or strings holding a JSON array as in CSV. Other columns are
    /// ignored. A bad row fails as <c>file:N</c> with N its 1-based row number.
    /// </summary>
    static DataRead<T> ReadParquet<T>(string path, Schema<T> schema, bool skipMalformed)
    {
        var table = ReadParquetTable(path);
        string[] found = [.. table.Schema.Fields.Select(f => f.Name)];
        foreach (string column in schema.Columns)
            if (!found.Contains(column))
                throw new InvalidDataException($"{path}: no column '{column}' (found '{string.Join(',', found)}'); the columns must be named '{string.Join(',', schema.Columns)}'.");

        var records = new List<T>();
        int skipped = 0;
        var values = new string[schema.Columns.Length];
        for (int row = 0; row < table.Data.Count; row++)
        {
            string? problem = null;
            for (int c = 0; c < values.Length && problem is null; c++)
            {
                table.Data[row].TryGetValue(schema.Columns[c], out object? v);
                (values[c], problem) = ParquetCell(schema.Columns[c], schema.Kinds[c], v);
            }
            T? record = default;
            if (problem is null) (record, problem) = schema.Parse(values);
            if (problem is null) records.Add(record!);
            else if (skipMalformed) skipped++;
            else throw new DataFileException(path, row + 1, problem);
        }
        return new DataRead<T>(records, skipped);
    }

    static DeserializationResult<Dictionary<string, object>> ReadParquetTable(string path)
    {
        using var stream = File.OpenRead(path);
        try { return ParquetSerializer.DeserializeUntypedAsync(stream).GetAwaiter().GetResult(); }
        catch (Exception e) when (e is IOException or InvalidDataException or NotSupportedException or ApplicationException or ArgumentException or InvalidOperationException)
        {
            throw new InvalidDataException($"{path}: not a readable Parquet file ({e.Message}).", e);
        }
    }

    /// <summary>A Parquet value as the CSV cell it stands for: a string as is (null = empty), a list as its JSON array.</summary>
    static (string Cell, string? Problem) ParquetCell(string column, ColumnKind kind, object? v)
    {
        if (v is null) return ("", null);
        if (v is string text) return (text, null);
        if (kind == ColumnKind.Text) return ("", $"column '{column}' must hold strings but holds {v.GetType().Name}");
        if (v is not System.Collections.IEnumerable items) return ("", $"column '{column}' must be a list or a JSON array string but holds {v.GetType().Name}");
        var list = items.Cast<object?>().Select(x => x is ReadOnlyMemory<char> m ? m.ToString() : x).ToList();   // Parquet.Net hands list strings as char memory
        if (kind == ColumnKind.StringArray)
            return list.All(x => x is string) ? (JsonSerializer.Serialize(list.Cast<string>()), null) : ("", $"column '{column}' must be a list of strings");
        return list.All(x => x is sbyte or byte or short or ushort or int or uint or long)
            ? (JsonSerializer.Serialize(list.Select(Convert.ToInt64)), null)
            : ("", $"column '{column}' must be a list of integers");
    }

    // ---- writing ----------------------------------------------------------------------------------------------

    static void Write<T>(string path, Schema<T> schema, IEnumerable<T> records)
    {
        ArgumentNullException.ThrowIfNull(records);
        DataFormat format = FormatOf(path);
        if (format == DataFormat.Parquet)
            throw new ArgumentException($"{path}: Parquet files are read, not written; write .csv or .jsonl.", nameof(path));
        Rlhf.Export.AtomicFile.WriteStream(path, stream =>
        {
            if (format == DataFormat.Csv)
            {
                var options = CsvWriterOptions.Default with { NewLine = "\n" };
                using var csv = CsvWriter.Create(stream, options, leaveOpen: true);
                csv.WriteHeader(schema.Columns);
                foreach (T r in records) csv.WriteRecord(schema.Format(Flat(r)));
                csv.Flush();
            }
            else
            {
                using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = false });
                foreach (T r in records)
                {
                    json.Reset();
                    schema.WriteJson(json, Flat(r));
                    json.Flush();
                    stream.WriteByte((byte)'\n');
                }
            }
        });
    }

    /// <summary>The record, when it is flat text: the writers write the flat formats only.</summary>
    static T Flat<T>(T record) => record is IConversationalRecord { IsConversational: true }
        ? throw new ArgumentException("conversational records (messages) are read, not written; write flat records", nameof(record))
        : record;

    // ---- schemas ----------------------------------------------------------------------------------------------

    enum ColumnKind { Text, StringArray, IntArray }

    sealed class Schema<T>(
        string[] columns,
        ColumnKind[] kinds,
        string example,
        Func<string[], (T? Record, string? Problem)> parse,
        Func<T, string[]> format,
        Action<Utf8JsonWriter, T> writeJson)
    {
        public string[] Columns { get; } = columns;
        public ColumnKind[] Kinds { get; } = kinds;
        public string Example { get; } = example;

        public string ExampleOf(int column) => Kinds[column] switch
        {
            ColumnKind.StringArray => "[\"first response\", \"second response\"]",
            ColumnKind.IntArray => "[1, 0]",
            _ => "\"text\"",
        };

        /// <summary>The record of one row's values (in <see cref="Columns"/> order), or what is wrong with them.</summary>
        public (T? Record, string? Problem) Parse(string[] values) => parse(values);

        public string[] Format(T record) => format(record);

        public void WriteJson(Utf8JsonWriter w, T record) => writeJson(w, record);
    }

    static class Schemas
    {
        public static readonly Schema<SftExample> Sft = new(
            ["prompt", "response"], [ColumnKind.Text, ColumnKind.Text],
            "{\"prompt\": \"...\", \"response\": \"...\"}",
            v => RequirePrompt(v[0]) ?? (v[1].Length == 0
                ? Bad<SftExample>("empty response; every SFT example needs a response to learn from")
                : (new SftExample(v[0], v[1]), null)),
            r => [r.Prompt, r.Response],
            (w, r) =>
            {
                w.WriteStartObject();
                w.WriteString("prompt", r.Prompt);
                w.WriteString("response", r.Response);
                w.WriteEndObject();
            });

        public static readonly Schema<SftExample> Response = new(
            Sft.Columns, Sft.Kinds, Sft.Example,
            v => (new SftExample(v[0], v[1]), null),
            Sft.Format, Sft.WriteJson);

        public static readonly Schema<PreferencePair> Preference = new(
            ["prompt", "chosen", "rejected"], [ColumnKind.Text, ColumnKind.Text, ColumnKind.Text],
            "{\"prompt\": \"...\", \"chosen\": \"...\", \"rejected\": \"...\"}",
            v => RequirePrompt<PreferencePair>(v[0]) ?? (new PreferencePair(v[0], v[1], v[2]), null),
            r => [r.Prompt, r.Chosen, r.Rejected],
            (w, r) =>
            {
                w.WriteStartObject();
                w.WriteString("prompt", r.Prompt);
                w.WriteString("chosen", r.Chosen);
                w.WriteString("rejected", r.Rejected);
                w.WriteEndObject();
            });

        public static readonly Schema<TextExample> Text = new(
            ["text"], [ColumnKind.Text],
            "{\"text\": \"...\"}",
            v => v[0].Trim().Length == 0 ? Bad<TextExample>("empty text; give every document some text or leave the row out") : (new TextExample(v[0]), null),
            r => [r.Text],
            (w, r) =>
            {
                w.WriteStartObject();
                w.WriteString("text", r.Text);
                w.WriteEndObject();
            });

        public static readonly Schema<PreferencePair> ScoredPreference = new(
            Preference.Columns, Preference.Kinds, Preference.Example,
            v => (new PreferencePair(v[0], v[1], v[2]), null),
            Preference.Format, Preference.WriteJson);

        public static readonly Schema<RankedExample> Ranked = new(
            ["prompt", "responses", "ranking"], [ColumnKind.Text, ColumnKind.StringArray, ColumnKind.IntArray],
            "{\"prompt\": \"...\", \"responses\": [\"a\", \"b\"], \"ranking\": [1, 0]}",
            ParseRanked,
            r => [r.Prompt, JsonSerializer.Serialize(r.Responses), JsonSerializer.Serialize(r.Ranking)],
            (w, r) =>
            {
                w.WriteStartObject();
                w.WriteString("prompt", r.Prompt);
                w.WriteStartArray("responses");
                foreach (string s in r.Responses) w.WriteStringValue(s);
                w.WriteEndArray();
                w.WriteStartArray("ranking");
                foreach (int k in r.Ranking) w.WriteNumberValue(k);
                w.WriteEndArray();
                w.WriteEndObject();
            });

        public static readonly Schema<PromptExample> Prompt = new(
            ["prompt"], [ColumnKind.Text],
            "{\"prompt\": \"...\"}",
            v => RequirePrompt<PromptExample>(v[0]) ?? (new PromptExample(v[0]), null),
            r => [r.Prompt],
            (w, r) =>
            {
                w.WriteStartObject();
                w.WriteString("prompt", r.Prompt);
                w.WriteEndObject();
            });

        static (RankedExample?, string?) ParseRanked(string[] v)
        {
            if (RequirePrompt<RankedExample>(v[0]) is { } bad) return bad;
            string[]? responses;
            int[]? ranking;
            try
            {
                responses = JsonSerializer.Deserialize<string[]>(v[1]);
            }
            catch (JsonException e)
            {
                return Bad<RankedExample>($"column 'responses' is not a JSON array of strings ({e.Message}); "
                    + "write it like [\"first response\", \"second response\"]");
            }
            try
            {
                ranking = JsonSerializer.Deserialize<int[]>(v[2]);
            }
            catch (JsonException e)
            {
                return Bad<RankedExample>($"column 'ranking' is not a JSON array of integers ({e.Message}); "
                    + "write it like [1, 0] (ranking[i] = rank of responses[i], 0 = best)");
            }
            if (responses is null || responses.Any(r => r is null))
                return Bad<RankedExample>("column 'responses' must be a JSON array of strings, not null");
            if (ranking is null)
                return Bad<RankedExample>("column 'ranking' must be a JSON array of integers, not null");
            string? problem = RankedExample.Validate(responses, ranking);
            return problem is null ? (new RankedExample(v[0], responses, ranking), null) : Bad<RankedExample>(problem);
        }

        static (T?, string?)? RequirePrompt<T>(string prompt) =>
            string.IsNullOrWhiteSpace(prompt) ? Bad<T>("empty prompt; every row needs a non-empty prompt") : null;

        static (SftExample?, string?)? RequirePrompt(string prompt) => RequirePrompt<SftExample>(prompt);

        static (T?, string?) Bad<T>(string problem) => (default, problem);
    }
}
