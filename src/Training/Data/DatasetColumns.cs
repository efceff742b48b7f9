namespace Rlhf.Training.Data;

/// <summary>
/// Which of a data file's columns (CSV header names, JSON fields, Parquet columns) hold each of our fields, for files
/// named otherwise: <c>"dataset_columns": {"prompt": "question", "response": "answer"}</c>. Each property is the file's
/// name for the field it is named after; the defaults are the names themselves (TRL's names, plus <c>response</c>).
/// OpenRLHF's <c>input_key</c>/<c>prompt_key</c> is <see cref="Prompt"/>, <c>output_key</c> <see cref="Response"/> (or
/// <see cref="Completion"/>), <c>chosen_key</c>/<c>rejected_key</c> <see cref="Chosen"/>/<see cref="Rejected"/>.
/// </summary>
public sealed record DatasetColumns
{
    /// <summary>The prompt: a string or a list of messages.</summary>
    public string Prompt { get; init; } = "prompt";
    /// <summary>The flat SFT response (a string).</summary>
    public string Response { get; init; } = "response";
    /// <summary>TRL's completion: a string or a list of assistant messages.</summary>
    public string Completion { get; init; } = "completion";
    /// <summary>A whole conversation: a list of messages.</summary>
    public string Messages { get; init; } = "messages";
    /// <summary>The preferred response (a string or a list of messages).</summary>
    public string Chosen { get; init; } = "chosen";
    /// <summary>The dispreferred response (a string or a list of messages).</summary>
    public string Rejected { get; init; } = "rejected";

    /// <summary>The identity mapping (every field under its own name).</summary>
    public static DatasetColumns Default { get; } = new();

    /// <summary>Our field names with the file's names for them.</summary>
    public IReadOnlyList<(string Field, string Column)> Pairs() =>
    [
        ("prompt", Prompt), ("response", Response), ("completion", Completion), ("messages", Messages),
        ("chosen", Chosen), ("rejected", Rejected),
    ];

    /// <summary>The file's name for our field <paramref name="field"/> (a field without a mapping keeps its name).</summary>
    public string ColumnOf(string field)
    {
        foreach (var (f, c) in Pairs())
            if (f == field) return c;
        return field;
    }

    /// <summary>Our field name for the file's column <paramref name="column"/>; null for a column that is one of our
    /// names but mapped away (another column holds that field); other columns keep their names.</summary>
    public string? FieldOf(string column)
    {
        foreach (var (f, c) in Pairs())
            if (c == column) return f;
        foreach (var (f, _) in Pairs())
            if (f == column) return null;
        return column;
    }

    /// <summary>What is wrong with the mapping (an empty name, one column for two fields), or null.</summary>
    public string? Problem()
    {
        var pairs = Pairs();
        if (pairs.FirstOrDefault(p => string.IsNullOrWhiteSpace(p.Column)) is { Field: not null } empty)
            return $"dataset_columns.{empty.Field} must name a column (default \"{empty.Field}\")";
        var twice = pairs.GroupBy(p => p.Column).FirstOrDefault(g => g.Count() > 1);
        return twice is null ? null
            : $"dataset_columns maps {string.Join(" and ", twice.Select(p => p.Field))} to the same column '{twice.Key}'; give each field its own column";
    }
}
