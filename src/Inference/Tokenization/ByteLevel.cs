using System.Text;
using System.Text.RegularExpressions;

namespace Rlhf.Inference.Tokenization;

/// <summary>
/// GPT-2 byte-level BPE conventions shared by the loader and the project's BPE trainer: the
/// byte-to-unicode table (every byte gets a printable character, e.g. space -> 'Ġ', newline -> 'Ċ')
/// and the GPT-2 pre-tokenizer regex (the one Hugging Face's <c>ByteLevel</c> pre-tokenizer uses when
/// <c>use_regex</c> is true). Source: openai/gpt-2 <c>encoder.py</c> (<c>bytes_to_unicode</c>, <c>pat</c>).
/// </summary>
public static class ByteLevel
{
    /// <summary>
    /// The GPT-2 split: contractions, words with an optional leading space, numbers, punctuation runs,
    /// and whitespace (a space directly before a non-space attaches to the following token).
    /// .NET matches on UTF-16 code units, so letters outside the BMP (rare) count as "other" here,
    /// while the Rust implementation counts them as letters.
    /// </summary>
    public const string Gpt2Pattern =
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>Compiled <see cref="Gpt2Pattern"/>.</summary>
    public static Regex Gpt2Regex { get; } = new(Gpt2Pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);

    private static readonly char[] ByteToCharTable = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByteTable =
        Enumerable.Range(0, 256).ToDictionary(b => ByteToCharTable[b], b => (byte)b);

    /// <summary>The printable character standing for byte <paramref name="b"/>.</summary>
    public static char ByteToChar(byte b) => ByteToCharTable[b];

    /// <summary>The byte a byte-level character stands for, or false when the character is not one.</summary>
    public static bool TryCharToByte(char c, out byte b) => CharToByteTable.TryGetValue(c, out b);

    /// <summary>UTF-8 bytes of <paramref name="text"/> written as byte-level characters.</summary>
    public static string Encode(string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        return string.Create(bytes.Length, bytes, static (span, src) =>
        {
            for (int i = 0; i < src.Length; i++)
            {
                span[i] = ByteToCharTable[src[i]];
            }
        });
    }

    /// <summary>Inverse of <see cref="Encode"/>: byte-level characters back to (UTF-8 decoded) text.</summary>
    public static string Decode(string byteLevelText)
    {
        var bytes = new byte[byteLevelText.Length];
        for (int i = 0; i < byteLevelText.Length; i++)
        {
            if (!CharToByteTable.TryGetValue(byteLevelText[i], out bytes[i]))
            {
                throw new ArgumentException($"'{byteLevelText[i]}' (U+{(int)byteLevelText[i]:X4}) is not a byte-level character.", nameof(byteLevelText));
            }
        }
        return Encoding.UTF8.GetString(bytes);
    }

    /// <summary>Pre-tokenizes with <see cref="Gpt2Regex"/>: the pieces, in order, concatenating to <paramref name="text"/>.</summary>
    public static IEnumerable<string> Split(string text)
    {
        for (Match m = Gpt2Regex.Match(text); m.Success; m = m.NextMatch())
        {
            yield return m.Value;
        }
    }

    private static char[] BuildByteToChar()
    {
        // Printable Latin-1 bytes map to themselves; the rest (controls, space, 0x7F-0xA0, 0xAD) to 256, 257, ...
        var table = new char[256];
        var printable = new bool[256];
        for (int b = '!'; b <= '~'; b++) printable[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            table[b] = printable[b] ? (char)b : (char)next++;
        }
        return table;
    }
}
