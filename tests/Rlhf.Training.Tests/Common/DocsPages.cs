using System.Text.RegularExpressions;

namespace Rlhf.Training.Tests.Common;

/// <summary>
/// The repository's README.md and the pages under docs/, found above the test binary, and the pieces of them that tests
/// hold against the code: a page's sections, the keys of a table's first column, the keys of a "Heading:" paragraph.
/// </summary>
internal static class DocsPages
{
    /// <summary>The repository root: the first folder above the test binary that holds Rlhf.sln.</summary>
    internal static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Rlhf.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("Rlhf.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The repository's README.md.</summary>
    internal static string Readme() => File.ReadAllText(Path.Combine(RepoRoot(), "README.md"));

    /// <summary>A page of docs/, e.g. <c>Docs("configuration.md")</c>.</summary>
    internal static string Docs(string page)
    {
        string f = Path.Combine(RepoRoot(), "docs", page);
        Assert.True(File.Exists(f), $"docs/{page} does not exist");
        return File.ReadAllText(f);
    }

    /// <summary>
    /// The section of <paramref name="page"/> that starts at the heading line <paramref name="heading"/> (e.g. "## PPO")
    /// and ends before the next heading of the same or a higher level (or at the end of the page). Lines inside code
    /// blocks are not headings.
    /// </summary>
    internal static string Section(string page, string heading)
    {
        int level = heading.TakeWhile(c => c == '#').Count();
        Assert.True(level > 0, $"'{heading}' is not a Markdown heading");
        string[] lines = page.Split('\n');
        int start = Array.FindIndex(lines, l => l.TrimEnd() == heading);
        Assert.True(start >= 0, $"no '{heading}' section");
        int end = lines.Length;
        bool inCode = false;
        for (int i = start + 1; i < lines.Length; i++)
        {
            if (lines[i].StartsWith("```", StringComparison.Ordinal)) inCode = !inCode;
            if (inCode) continue;
            int l = lines[i].TakeWhile(c => c == '#').Count();
            if (l > 0 && l <= level && lines[i].Length > l && lines[i][l] == ' ') { end = i; break; }
        }
        return string.Join('\n', lines[start..end]);
    }

    /// <summary>
    /// The rows of the Markdown tables in <paramref name="text"/> whose first cell is one `key`: the key and the other
    /// cells, trimmed (an escaped <c>\|</c> stays inside its cell).
    /// </summary>
    internal static (string Key, string[] Cells)[] TableRows(string text) =>
        [.. text.Split('\n')
            .Select(l => Regex.Split(l.Trim(), @"(?<!\\)\|"))
            .Where(c => c.Length > 2 && c[0].Length == 0 && Regex.IsMatch(c[1].Trim(), "^`[a-z0-9_]+`$"))
            .Select(c => (c[1].Trim().Trim('`'), c[2..^1].Select(x => x.Trim()).ToArray()))];

    /// <summary>The `keys` in the first cells of the table rows of <paramref name="text"/> (a cell may name several).</summary>
    internal static string[] TableKeys(string text) =>
        [.. text.Split('\n').Where(l => l.StartsWith("| `", StringComparison.Ordinal))
            .SelectMany(l => Regex.Matches(l.Split('|')[1], "`([a-z0-9_]+)`").Select(m => m.Groups[1].Value))];

    /// <summary>The `keys` of the paragraph of <paramref name="page"/> that starts with <paramref name="heading"/> (values in parentheses left out).</summary>
    internal static string[] ParagraphKeys(string page, string heading)
    {
        int start = page.IndexOf("\n" + heading, StringComparison.Ordinal);
        Assert.True(start >= 0, $"no paragraph starting with '{heading}'");
        int end = page.IndexOf("\n\n", start + 1, StringComparison.Ordinal);
        string paragraph = Regex.Replace(page[start..(end < 0 ? page.Length : end)], @"\([^)]*\)", "");
        return [.. Regex.Matches(paragraph, "`([a-z0-9_]+)`").Select(m => m.Groups[1].Value)];
    }
}
