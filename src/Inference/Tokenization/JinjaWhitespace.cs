using System.Text;

namespace Rlhf.Inference.Tokenization;

/// <summary>
/// transformers renders chat templates with Jinja's <c>trim_blocks</c> (the first newline after a block or comment tag
/// is dropped) and <c>lstrip_blocks</c> (spaces and tabs from the start of a line up to a block or comment tag are
/// dropped). ONNX Runtime GenAI 0.18's engine applies neither (measured: <c>"{% if true %}\nX{% endif %}"</c> renders
/// <c>"\nX"</c> there, <c>"X"</c> in transformers) and rejects the <c>{%+</c>/<c>+%}</c> markers that turn them off, so
/// <see cref="Apply"/> makes both explicit in the source: it edits only text between tags, never inside one.
/// </summary>
public static class JinjaWhitespace
{
    /// <summary>The template with <c>trim_blocks</c> and <c>lstrip_blocks</c> applied to its text, and <c>+</c> markers removed.</summary>
    public static string Apply(string source)
    {
        ArgumentNullException.ThrowIfNull(source);
        var output = new StringBuilder(source.Length);
        int i = 0;
        bool trimNext = false;   // the previous tag was a block/comment without '+': drop one newline
        while (i < source.Length)
        {
            int open = NextTag(source, i);
            string text = source[i..(open < 0 ? source.Length : open)];
            if (open < 0) { output.Append(trimNext ? DropFirstNewline(text) : text); break; }
            char kind = source[open + 1];
            bool plusLeft = open + 2 < source.Length && source[open + 2] == '+';
            if (kind != '{' && !plusLeft) text = LstripLastLine(text, atStart: i == 0);
            output.Append(trimNext ? DropFirstNewline(text) : text);
            int close = TagEnd(source, open, kind);
            string tag = source[open..close];
            bool plusRight = tag.Length >= 3 && tag[^3] == '+';
            if (plusLeft) tag = tag.Remove(2, 1);
            if (plusRight) tag = tag.Remove(tag.Length - 3, 1);
            output.Append(tag);
            trimNext = kind != '{' && !plusRight;
            i = close;
        }
        return output.ToString();
    }

    /// <summary>The index of the next <c>{{</c>, <c>{%</c> or <c>{#</c> at or after <paramref name="from"/>; -1 when none.</summary>
    static int NextTag(string s, int from)
    {
        for (int k = s.IndexOf('{', from); k >= 0 && k + 1 < s.Length; k = s.IndexOf('{', k + 1))
            if (s[k + 1] is '{' or '%' or '#') return k;
        return -1;
    }

    /// <summary>The index just after the tag opened at <paramref name="open"/>; quoted strings inside a tag are skipped.</summary>
    static int TagEnd(string s, int open, char kind)
    {
        char last = kind == '{' ? '}' : kind;
        char? quote = null;
        for (int k = open + 2; k + 1 < s.Length; k++)
        {
            char c = s[k];
            if (kind == '#') { if (c == '#' && s[k + 1] == '}') return k + 2; continue; }
            if (quote is { } q) { if (c == '\\') k++; else if (c == q) quote = null; continue; }
            if (c is '"' or '\'') quote = c;
            else if (c == last && s[k + 1] == '}') return k + 2;
        }
        throw new ChatTemplateException($"unclosed '{s.Substring(open, 2)}' tag at character {open}");
    }

    static string DropFirstNewline(string text) =>
        text.StartsWith("\r\n", StringComparison.Ordinal) ? text[2..] : text.StartsWith('\n') ? text[1..] : text;

    /// <summary>
    /// Drops the spaces and tabs that end <paramref name="text"/> when they are all that precedes the tag on its line
    /// (<paramref name="atStart"/>: the text starts the template).
    /// </summary>
    static string LstripLastLine(string text, bool atStart)
    {
        int k = text.Length;
        while (k > 0 && text[k - 1] is ' ' or '\t') k--;
        bool lineStart = k == 0 ? atStart : text[k - 1] == '\n';
        return lineStart ? text[..k] : text;
    }
}
