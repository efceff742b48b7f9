using System.Globalization;
using CsvHelper;
using Rlhf.Export;

namespace Rlhf.Training.Common;

/// <summary>
/// Metric rows keyed by column name (cleanrl/TRL names such as <c>loss/policy</c>), kept in memory and rewritten
/// atomically to CSV, so a resumed run simply continues the table it restored from its checkpoint.
/// </summary>
public sealed class MetricsTable
{
    readonly List<string> _columns = [];
    readonly List<Dictionary<string, double>> _rows = [];

    /// <summary>Rows so far, oldest first.</summary>
    public IReadOnlyList<IReadOnlyDictionary<string, double>> Rows => _rows;

    /// <summary>Column names in first-seen order.</summary>
    public IReadOnlyList<string> Columns => _columns;

    /// <summary>Appends a row; new column names are added at the end.</summary>
    public void Add(IReadOnlyDictionary<string, double> row)
    {
        foreach (string k in row.Keys) if (!_columns.Contains(k)) _columns.Add(k);
        _rows.Add(new Dictionary<string, double>(row));
    }

    /// <summary>The values of one column with their <paramref name="x"/> column, skipping rows lacking either.</summary>
    public (double[] X, double[] Y) Series(string x, string y)
    {
        var xs = new List<double>();
        var ys = new List<double>();
        foreach (var r in _rows)
            if (r.TryGetValue(x, out double a) && r.TryGetValue(y, out double b)) { xs.Add(a); ys.Add(b); }
        return (xs.ToArray(), ys.ToArray());
    }

    /// <summary>Writes the table as CSV (empty cell where a row lacks a column), atomically.</summary>
    public void WriteCsv(string path)
    {
        AtomicFile.Write(path, tmp =>
        {
            using var w = CsvWriter.ToFile(tmp);
            w.WriteHeader(_columns.ToArray());
            foreach (var r in _rows)
                w.WriteRecord(_columns.Select(c => r.TryGetValue(c, out double v) ? v.ToString("R", CultureInfo.InvariantCulture) : "").ToArray());
        });
    }

    /// <summary>Reads a table written by <see cref="WriteCsv"/> (used when resuming).</summary>
    public static MetricsTable ReadCsv(string path)
    {
        var t = new MetricsTable();
        using var reader = CsvReader.FromFile(path);
        string[] header = reader.Headers.ToArray();
        while (reader.Read())
        {
            var row = new Dictionary<string, double>();
            for (int i = 0; i < header.Length && i < reader.FieldCount; i++)
            {
                string s = reader.GetString(i);
                if (s.Length > 0) row[header[i]] = double.Parse(s, CultureInfo.InvariantCulture);
            }
            t.Add(row);
        }
        foreach (string c in header) if (!t._columns.Contains(c)) t._columns.Add(c);
        return t;
    }
}
