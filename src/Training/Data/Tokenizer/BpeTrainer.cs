using System.Runtime.InteropServices;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Training.Data.Tokenizer;

/// <summary>Settings of <see cref="BpeTrainer"/>.</summary>
public sealed record BpeTrainerOptions
{
    /// <summary>Final vocabulary size: 3 special tokens + 256 byte symbols + merges.</summary>
    public int VocabSize { get; init; } = 2048;
    /// <summary>Stop early when the most frequent pair occurs fewer times than this.</summary>
    public int MinFrequency { get; init; } = 2;
    /// <summary>Padding token, id 0.</summary>
    public string PadToken { get; init; } = "<|pad|>";
    /// <summary>Beginning-of-sequence token, id 1.</summary>
    public string BosToken { get; init; } = "<|bos|>";
    /// <summary>End-of-sequence token, id 2.</summary>
    public string EosToken { get; init; } = "<|eos|>";
    /// <summary><c>model_max_length</c> written to <c>tokenizer_config.json</c>.</summary>
    public int ModelMaxLength { get; init; } = 2048;

    /// <summary>Throws with a message saying what to change when a setting is unusable.</summary>
    public void Validate()
    {
        if (VocabSize < ByteLevelBpe.FirstMergeId)
        {
            throw new ArgumentException($"VocabSize {VocabSize} is too small: it must hold the 3 special tokens and 256 byte symbols (>= {ByteLevelBpe.FirstMergeId}).");
        }
        if (MinFrequency < 1)
        {
            throw new ArgumentException($"MinFrequency must be >= 1 (got {MinFrequency}).");
        }
        string[] specials = [PadToken, BosToken, EosToken];
        if (specials.Any(string.IsNullOrEmpty) || specials.Distinct(StringComparer.Ordinal).Count() != 3)
        {
            throw new ArgumentException("PadToken, BosToken and EosToken must be non-empty and distinct.");
        }
        if (ModelMaxLength < 1)
        {
            throw new ArgumentException($"ModelMaxLength must be >= 1 (got {ModelMaxLength}).");
        }
    }
}

/// <summary>
/// The project's byte-level BPE trainer (Sennrich et al. 2016, "Neural Machine Translation of Rare Words
/// with Subword Units", in the GPT-2 byte-level form of Radford et al. 2019).
/// <para>
/// Text is split with the GPT-2 regex (<see cref="ByteLevel.Gpt2Pattern"/>); each piece becomes a sequence of
/// byte symbols and is counted once per word type. Each step merges the most frequent adjacent pair
/// (count summed over word types weighted by their frequency); ties go to the smaller (left id, right id).
/// Pair counts are updated incrementally: only the word types holding the merged pair are revisited,
/// and a max-heap with lazy deletion finds the next pair.
/// </para>
/// <para>Ids: 0 <c>&lt;|pad|&gt;</c>, 1 <c>&lt;|bos|&gt;</c>, 2 <c>&lt;|eos|&gt;</c>, 3..258 the bytes 0..255, then one id per merge.</para>
/// </summary>
public static class BpeTrainer
{
    /// <summary>Learns merges from <paramref name="texts"/> until the vocabulary reaches <see cref="BpeTrainerOptions.VocabSize"/>.</summary>
    public static ByteLevelBpe Train(IEnumerable<string> texts, BpeTrainerOptions? options = null)
    {
        options ??= new BpeTrainerOptions();
        options.Validate();

        // 1. Word types and their counts.
        var wordCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (string text in texts)
        {
            foreach (string piece in ByteLevel.Split(text))
            {
                CollectionsMarshal.GetValueRefOrAddDefault(wordCounts, piece, out _)++;
            }
        }
        string[] types = [.. wordCounts.Keys.Order(StringComparer.Ordinal)];
        var words = new int[types.Length][];
        var lengths = new int[types.Length];
        var counts = new long[types.Length];
        for (int w = 0; w < types.Length; w++)
        {
            byte[] bytes = System.Text.Encoding.UTF8.GetBytes(types[w]);
            words[w] = new int[bytes.Length];
            for (int i = 0; i < bytes.Length; i++)
            {
                words[w][i] = ByteLevelBpe.ByteId(bytes[i]);
            }
            lengths[w] = bytes.Length;
            counts[w] = wordCounts[types[w]];
        }

        // 2. Initial pair counts and where each pair occurs.
        var pairCounts = new Dictionary<long, long>();
        var where = new Dictionary<long, List<int>>();
        for (int w = 0; w < words.Length; w++)
        {
            for (int i = 0; i + 1 < lengths[w]; i++)
            {
                long key = Key(words[w][i], words[w][i + 1]);
                CollectionsMarshal.GetValueRefOrAddDefault(pairCounts, key, out _) += counts[w];
                AddWhere(where, key, w);
            }
        }
        var heap = new PriorityQueue<long, (long NegCount, long Key)>();
        foreach ((long key, long count) in pairCounts)
        {
            heap.Enqueue(key, (-count, key));
        }

        // 3. Merge until the vocabulary is full.
        var merges = new List<(int Left, int Right)>();
        var stamp = new int[words.Length];
        var deltas = new Dictionary<long, long>();
        int vocab = ByteLevelBpe.FirstMergeId;
        while (vocab < options.VocabSize && heap.TryDequeue(out long best, out var priority))
        {
            long current = pairCounts.GetValueOrDefault(best);
            if (current != -priority.NegCount)
            {
                continue; // stale heap entry
            }
            if (current < options.MinFrequency)
            {
                break;
            }
            int a = (int)(best >> 32), b = (int)(best & 0xFFFFFFFF);
            int merged = vocab++;
            merges.Add((a, b));
            deltas.Clear();
            int mark = merges.Count;
            foreach (int w in where[best])
            {
                if (stamp[w] == mark)
                {
                    continue;
                }
                stamp[w] = mark;
                MergeWord(words[w], ref lengths[w], counts[w], a, b, merged, deltas, where, w);
            }
            where.Remove(best);
            foreach ((long key, long delta) in deltas)
            {
                if (delta == 0)
                {
                    continue;
                }
                ref long count = ref CollectionsMarshal.GetValueRefOrAddDefault(pairCounts, key, out _);
                count += delta;
                if (count > 0)
                {
                    heap.Enqueue(key, (-count, key));
                }
                else
                {
                    pairCounts.Remove(key);
                }
            }
        }

        return new ByteLevelBpe(merges, options);
    }

    private static void MergeWord(int[] syms, ref int length, long count, int a, int b, int merged,
        Dictionary<long, long> deltas, Dictionary<long, List<int>> where, int w)
    {
        bool found = false;
        for (int i = 0; i + 1 < length; i++)
        {
            if (syms[i] == a && syms[i + 1] == b)
            {
                found = true;
                break;
            }
        }
        if (!found)
        {
            return; // the word lost this pair to an earlier merge
        }
        for (int i = 0; i + 1 < length; i++)
        {
            CollectionsMarshal.GetValueRefOrAddDefault(deltas, Key(syms[i], syms[i + 1]), out _) -= count;
        }
        int j = 0;
        for (int i = 0; i < length;)
        {
            if (i + 1 < length && syms[i] == a && syms[i + 1] == b)
            {
                syms[j++] = merged;
                i += 2;
            }
            else
            {
                syms[j++] = syms[i++];
            }
        }
        length = j;
        for (int i = 0; i + 1 < length; i++)
        {
            long key = Key(syms[i], syms[i + 1]);
            CollectionsMarshal.GetValueRefOrAddDefault(deltas, key, out _) += count;
            if (syms[i] == merged || syms[i + 1] == merged)
            {
                AddWhere(where, key, w);
            }
        }
    }

    private static void AddWhere(Dictionary<long, List<int>> where, long key, int w)
    {
        ref List<int>? list = ref CollectionsMarshal.GetValueRefOrAddDefault(where, key, out _);
        list ??= [];
        if (list.Count == 0 || list[^1] != w)
        {
            list.Add(w);
        }
    }

    private static long Key(int left, int right) => ((long)left << 32) | (uint)right;
}
