using System.Collections.Concurrent;
using System.Text;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Training.Data.Tokenizer;

/// <summary>
/// A trained byte-level BPE vocabulary (the output of <see cref="BpeTrainer"/>) with a plain reference
/// encoder (GPT-2's <c>bpe()</c>: repeatedly merge every occurrence of the lowest-rank adjacent pair) and
/// <see cref="Save"/> to Hugging Face files. Ids: 0 pad, 1 bos, 2 eos, 3..258 bytes, 259.. merges in rank order.
/// </summary>
public sealed class ByteLevelBpe
{
    /// <summary>Id of the first byte symbol (byte 0).</summary>
    public const int FirstByteId = 3;
    /// <summary>Id of the first merged token.</summary>
    public const int FirstMergeId = FirstByteId + 256;

    private readonly string[] _tokens;
    private readonly Dictionary<long, int> _mergeRank = [];
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);

    internal ByteLevelBpe(IReadOnlyList<(int Left, int Right)> merges, BpeTrainerOptions options)
    {
        Options = options;
        Merges = merges;
        _tokens = new string[FirstMergeId + merges.Count];
        _tokens[PadId] = options.PadToken;
        _tokens[BosId] = options.BosToken;
        _tokens[EosId] = options.EosToken;
        for (int b = 0; b < 256; b++)
        {
            _tokens[ByteId((byte)b)] = ByteLevel.ByteToChar((byte)b).ToString();
        }
        for (int r = 0; r < merges.Count; r++)
        {
            (int left, int right) = merges[r];
            _tokens[FirstMergeId + r] = _tokens[left] + _tokens[right];
            _mergeRank[((long)left << 32) | (uint)right] = r;
        }
    }

    /// <summary>The settings it was trained with (special token strings, model_max_length).</summary>
    public BpeTrainerOptions Options { get; }
    /// <summary>Merges in rank order as (left id, right id); merge r creates id <see cref="FirstMergeId"/> + r.</summary>
    public IReadOnlyList<(int Left, int Right)> Merges { get; }
    /// <summary>Token strings by id (byte-level characters for bytes and merges, e.g. "Ġthe").</summary>
    public IReadOnlyList<string> Tokens => _tokens;
    /// <summary>Vocabulary size.</summary>
    public int VocabSize => _tokens.Length;
    /// <summary>Padding token id.</summary>
    public int PadId => 0;
    /// <summary>Beginning-of-sequence token id.</summary>
    public int BosId => 1;
    /// <summary>End-of-sequence token id.</summary>
    public int EosId => 2;

    /// <summary>Id of the symbol for byte <paramref name="b"/>.</summary>
    public static int ByteId(byte b) => FirstByteId + b;

    /// <summary>Encodes text without adding special tokens; special token strings in the text map to their ids.</summary>
    public int[] Encode(string text)
    {
        var ids = new List<int>();
        string[] specials = [Options.PadToken, Options.BosToken, Options.EosToken];
        int start = 0;
        while (start < text.Length)
        {
            int at = -1, which = -1;
            for (int s = 0; s < specials.Length; s++)
            {
                int i = text.IndexOf(specials[s], start, StringComparison.Ordinal);
                if (i >= 0 && (at < 0 || i < at))
                {
                    (at, which) = (i, s);
                }
            }
            int end = at < 0 ? text.Length : at;
            foreach (string piece in ByteLevel.Split(text[start..end]))
            {
                ids.AddRange(EncodePiece(piece));
            }
            if (at < 0)
            {
                break;
            }
            ids.Add(which);
            start = at + specials[which].Length;
        }
        return [.. ids];
    }

    /// <summary>Decodes ids to text; invalid UTF-8 becomes U+FFFD as in Hugging Face.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecial = true)
    {
        var bytes = new List<byte>();
        var sb = new StringBuilder();
        foreach (int id in ids)
        {
            if (id < FirstByteId)
            {
                if (!skipSpecial)
                {
                    sb.Append(Encoding.UTF8.GetString([.. bytes])).Append(_tokens[id]);
                    bytes.Clear();
                }
                continue;
            }
            foreach (char c in _tokens[id])
            {
                ByteLevel.TryCharToByte(c, out byte b);
                bytes.Add(b);
            }
        }
        return sb.Append(Encoding.UTF8.GetString([.. bytes])).ToString();
    }

    /// <summary>Writes <c>tokenizer.json</c>, <c>vocab.json</c>, <c>merges.txt</c>, <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>.</summary>
    public void Save(string folder) => HfTokenizerFiles.Write(this, folder);

    private int[] EncodePiece(string piece)
    {
        if (_cache.TryGetValue(piece, out int[]? cached))
        {
            return cached;
        }
        byte[] bytes = Encoding.UTF8.GetBytes(piece);
        var syms = new List<int>(bytes.Length);
        foreach (byte b in bytes)
        {
            syms.Add(ByteId(b));
        }
        while (syms.Count > 1)
        {
            int bestRank = int.MaxValue;
            for (int i = 0; i + 1 < syms.Count; i++)
            {
                if (_mergeRank.TryGetValue(((long)syms[i] << 32) | (uint)syms[i + 1], out int rank) && rank < bestRank)
                {
                    bestRank = rank;
                }
            }
            if (bestRank == int.MaxValue)
            {
                break;
            }
            (int a, int b2) = Merges[bestRank];
            var next = new List<int>(syms.Count);
            for (int i = 0; i < syms.Count;)
            {
                if (i + 1 < syms.Count && syms[i] == a && syms[i + 1] == b2)
                {
                    next.Add(FirstMergeId + bestRank);
                    i += 2;
                }
                else
                {
                    next.Add(syms[i++]);
                }
            }
            syms = next;
        }
        int[] result = [.. syms];
        if (_cache.Count < 100_000)
        {
            _cache[piece] = result;
        }
        return result;
    }
}
