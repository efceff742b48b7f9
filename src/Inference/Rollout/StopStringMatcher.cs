namespace Rlhf.Inference.Rollout;

/// <summary>
/// Finds stop strings in a row's decoded response as it grows. The engine decodes the response after each step and
/// asks whether a stop string ends inside the newly appended text (a stop string may straddle the old/new boundary);
/// on a hit the response is cut just before the stop string (as TRL / vLLM do, the stop string is not kept).
/// Ordinal comparison; immutable, so one matcher can serve many rows.
/// </summary>
public sealed class StopStringMatcher
{
    readonly string[] _stops;

    public StopStringMatcher(IReadOnlyList<string> stopStrings)
    {
        ArgumentNullException.ThrowIfNull(stopStrings);
        _stops = [.. stopStrings];
        foreach (string s in _stops)
        {
            if (string.IsNullOrEmpty(s)) throw new ArgumentException("Stop strings must be non-empty.", nameof(stopStrings));
        }
    }

    /// <summary>True when there are no stop strings (the engine can skip decoding for stop checks).</summary>
    public bool IsEmpty => _stops.Length == 0;

    /// <summary>
    /// Start index of the earliest stop string in <paramref name="text"/> that ends after <paramref name="newTextStart"/>
    /// (so it overlaps the text appended since the last check), or -1. Pass <paramref name="text"/> = the response only
    /// (not the prompt), and <paramref name="newTextStart"/> = its length at the previous check (0 the first time).
    /// </summary>
    public int FindNew(ReadOnlySpan<char> text, int newTextStart)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(newTextStart);
        int best = -1;
        foreach (string s in _stops)
        {
            int from = Math.Max(0, newTextStart - s.Length + 1);
            if (from >= text.Length) continue;
            int at = text[from..].IndexOf(s, StringComparison.Ordinal);
            if (at >= 0 && (best < 0 || from + at < best)) best = from + at;
        }
        return best;
    }

    /// <summary>Start index of the earliest stop string anywhere in <paramref name="text"/>, or -1.</summary>
    public int Find(ReadOnlySpan<char> text) => FindNew(text, 0);

    /// <summary><paramref name="text"/> cut before its earliest stop string (unchanged when there is none).</summary>
    public string Trim(string text)
    {
        int at = Find(text);
        return at < 0 ? text : text[..at];
    }
}
