using Rlhf.Training.Common;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.Sft;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// PPO-ptx (InstructGPT eq. 2): the term γ_ptx·E_{x~D_pretrain}[log π(x)] over every token of pretraining text.
/// Documents become one token stream <c>[BOS] doc₁ [EOS] [BOS] doc₂ [EOS] …</c> (packed, as GPT pretraining), cut into
/// rows of L tokens that overlap by one: row k = stream[k·(L−1) .. k·(L−1)+L), so every token after the first is
/// predicted exactly once, from the tokens before it in its row. Rows are visited in a seeded random order,
/// <paramref name="batchSize"/> per batch.
/// </summary>
public sealed class PtxBatches
{
    readonly int[][] _rows;
    readonly int[] _order;
    readonly int _batchSize;

    /// <param name="stream">the packed token stream (at least <paramref name="seqLen"/> tokens)</param>
    /// <param name="seqLen">L, tokens per row (≥ 2)</param>
    public PtxBatches(int[] stream, int seqLen, int batchSize, long seed)
    {
        if (seqLen < 2) throw new ArgumentException($"ptx_seq_len must be ≥ 2; got {seqLen}.");
        if (stream.Length < seqLen) throw new InvalidDataException($"The PPO-ptx text has {stream.Length} tokens, fewer than ptx_seq_len ({seqLen}); give more text or a shorter ptx_seq_len.");
        _rows = Rows(stream, seqLen);
        _order = SplitMixRandom.Permutation(_rows.Length, seed);
        _batchSize = batchSize;
    }

    /// <summary>Rows of the packed stream: row k = stream[k·(L−1) .. k·(L−1)+L); a last partial row is dropped.</summary>
    public static int[][] Rows(int[] stream, int seqLen)
    {
        int stride = seqLen - 1;
        int count = (stream.Length - 1) / stride;
        var rows = new List<int[]>(count);
        for (int k = 0; k * stride + seqLen <= stream.Length; k++) rows.Add(stream[(k * stride)..(k * stride + seqLen)]);
        return [.. rows];
    }

    /// <summary>The packed stream of <paramref name="docs"/>: BOS (when the tokenizer has one), the text, EOS (when it has one).</summary>
    public static int[] Pack(TextTokenizer tokenizer, IEnumerable<string> docs)
    {
        var stream = new List<int>();
        foreach (string d in docs)
        {
            if (tokenizer.AddedBosId is int bos) stream.Add(bos);
            stream.AddRange(tokenizer.Encode(d));
            if (tokenizer.EosId is int eos) stream.Add(eos);
        }
        return [.. stream];
    }

    /// <summary>Number of rows.</summary>
    public int RowCount => _rows.Length;

    /// <summary>Token ids of batch <paramref name="k"/> [B, L] (rows cycle through the seeded order).</summary>
    public Tensor Batch(int k, Device device)
    {
        int l = _rows[0].Length;
        var ids = new long[_batchSize * l];
        for (int b = 0; b < _batchSize; b++)
        {
            int[] row = _rows[_order[(int)(((long)k * _batchSize + b) % _rows.Length)]];
            for (int t = 0; t < l; t++) ids[b * l + t] = row[t];
        }
        return tensor(ids, [_batchSize, l], device: device);
    }

    /// <summary>
    /// −mean over every predicted token of log π(x_t | x_&lt;t) for batch <paramref name="k"/> (nats per token; logits
    /// at temperature 1): the ptx negative log-likelihood, to be scaled by γ_ptx (<see cref="PpoLosses.Ptx"/>).
    /// </summary>
    public Tensor Nll(LlamaForCausalLM actor, int k, Device device) => Nll(actor, Batch(k, device));

    /// <summary>−mean_{b, t ≥ 1} log softmax(logits[b, t−1])[ids[b, t]] of the rows <paramref name="ids"/> [B, L] (no padding).</summary>
    public static Tensor Nll(LlamaForCausalLM actor, Tensor ids)
    {
        long b = ids.shape[0], l = ids.shape[1];
        using var mask = ones(b, l, dtype: ScalarType.Int64, device: ids.device);
        using var pos = arange(l, dtype: ScalarType.Int64, device: ids.device).unsqueeze(0).expand(b, l);
        var logits = actor.Forward(ids, mask, pos);
        var logp = LogProbs.OfTokens(logits.narrow(1, 0, l - 1), ids.narrow(1, 1, l - 1));   // [B, L−1]
        using var tokenMask = ones_like(logp);
        return PpoLosses.Ptx(logp, tokenMask, 1.0);
    }

    /// <summary>
    /// Perplexity exp(mean NLL) of <paramref name="model"/> over every predicted token of <paramref name="rows"/> (equal
    /// lengths, as <see cref="Rows"/> cuts them), in batches of <paramref name="batchSize"/> rows, without gradients.
    /// </summary>
    public static double Perplexity(LlamaForCausalLM model, int[][] rows, Device device, int batchSize = 16)
    {
        using var noGrad = no_grad();
        double sum = 0;
        long tokens = 0;
        for (int i = 0; i < rows.Length; i += batchSize)
        {
            using var scope = NewDisposeScope();
            int[][] part = rows[i..Math.Min(rows.Length, i + batchSize)];
            int l = part[0].Length;
            using var ids = tensor(part.SelectMany(r => r.Select(x => (long)x)).ToArray(), [part.Length, l], device: device);
            long predicted = part.Length * (long)(l - 1);
            sum += Nll(model, ids).item<float>() * (double)predicted;
            tokens += predicted;
        }
        return Math.Exp(sum / tokens);
    }

    /// <summary>Documents of the default task's held-out corpus measured in the PPO report (the alignment tax).</summary>
    public const int HeldOutCorpusDocuments = 256;

    /// <summary>
    /// Rows of <see cref="PpoConfig.PtxSeqLen"/> tokens of the default task's held-out corpus (<see cref="DataSets.HeldOutCorpus"/>),
    /// on which the PPO report compares the perplexity of the SFT and PPO models; null with a <see cref="PpoConfig.PtxFile"/>
    /// (its text is the user's and nothing of it is held out).
    /// </summary>
    public static int[][]? HeldOutRows(PpoConfig cfg, TextTokenizer tokenizer, int maxPositions) =>
        cfg.PtxFile is null && cfg.PtxSeqLen <= maxPositions
            ? Rows(Pack(tokenizer, DataSets.HeldOutCorpus((ulong)cfg.Seed, HeldOutCorpusDocuments)), cfg.PtxSeqLen) is { Length: > 0 } rows ? rows : null
            : null;

    /// <summary>
    /// The ptx data of a run: <see cref="PpoConfig.PtxFile"/> (plain text lines, or a <c>text</c> column of CSV/JSONL/Parquet), or the
    /// default task's corpus (the texts <c>rlhf data</c> writes to corpus.txt for the same seed).
    /// </summary>
    public static PtxBatches Load(PpoConfig cfg, TextTokenizer tokenizer, int maxPositions)
    {
        if (cfg.PtxSeqLen > maxPositions)
            throw new InvalidDataException($"ptx_seq_len ({cfg.PtxSeqLen}) is longer than the model's max_position_embeddings ({maxPositions}); lower it.");
        IEnumerable<string> docs = cfg.PtxFile is null
            ? DataSets.Corpus((ulong)cfg.Seed, DefaultCorpusDocuments)
            : DataFiles.ReadTexts(cfg.PtxFile).Records.Select(r => r.Text);
        return new PtxBatches(Pack(tokenizer, docs), cfg.PtxSeqLen, cfg.PtxBatchSize, cfg.Seed * 7919 + 17);
    }

    /// <summary>Documents of the default task's corpus used for ptx.</summary>
    public const int DefaultCorpusDocuments = 8192;
}
