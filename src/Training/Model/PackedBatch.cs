using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Sequences packed end to end into rows so that a forward pass spends (almost) no compute on padding: token ids,
/// positions restarting at 0 in every sequence, and a block-diagonal causal mask that keeps each sequence to its own
/// earlier tokens. Every sequence's hidden states equal those of the sequence run alone (up to float rounding).
/// </summary>
public sealed class PackedBatch : IDisposable
{
    /// <summary>[R, L] int64 token ids (padding id after a row's last sequence).</summary>
    public required Tensor InputIds { get; init; }
    /// <summary>[R, L] int64 position of each token within its own sequence (0 on padding).</summary>
    public required Tensor PositionIds { get; init; }
    /// <summary>[R, 1, L, L] bool: key k is visible to query q when both belong to the same sequence and k ≤ q (padding sees padding).</summary>
    public required Tensor Allowed { get; init; }
    /// <summary>Per sequence, the flat index r·L + c of its first token in [R·L].</summary>
    public required long[] Starts { get; init; }
    /// <summary>For a batch packed by <see cref="FromPadded"/>: per padded position b·S + t, its flat index in [R·L] (−1 on padding).</summary>
    public long[] PaddedToFlat { get; private set; } = [];

    /// <summary>
    /// Packs the real tokens (attentionMask = 1) of each row of a padded batch (left, right or both sides) and records
    /// where every real padded position lands (<see cref="PaddedToFlat"/>). inputIds/attentionMask [B, S] int64; every
    /// row needs a real token.
    /// </summary>
    public static PackedBatch FromPadded(Tensor inputIds, Tensor attentionMask)
    {
        long b = inputIds.shape[0], s = inputIds.shape[1];
        long[] ids = inputIds.to(CPU).data<long>().ToArray();
        long[] mask = attentionMask.to(CPU).data<long>().ToArray();
        var rows = new long[b][];
        for (long i = 0; i < b; i++)
            rows[i] = [.. Enumerable.Range(0, (int)s).Where(t => mask[i * s + t] != 0).Select(t => ids[i * s + t])];
        var packed = Pack(rows, 0, inputIds.device);
        var map = new long[b * s];
        for (long i = 0; i < b; i++)
        {
            long next = packed.Starts[i];
            for (long t = 0; t < s; t++) map[i * s + t] = mask[i * s + t] != 0 ? next++ : -1;
        }
        packed.PaddedToFlat = map;
        return packed;
    }

    /// <summary>
    /// Packs <paramref name="sequences"/> (each non-empty) first-fit-decreasing into rows as long as the longest
    /// sequence; ties keep input order, so the layout is deterministic.
    /// </summary>
    public static PackedBatch Pack(IReadOnlyList<long[]> sequences, long padId, Device device)
    {
        var (rows, width, place) = Layout([.. sequences.Select(s => s.Length)]);
        var ids = Enumerable.Repeat(padId, rows * width).ToArray();
        var pos = new long[rows * width];
        var segment = Enumerable.Repeat(-1L, rows * width).ToArray();
        var starts = new long[sequences.Count];
        for (int i = 0; i < sequences.Count; i++)
        {
            starts[i] = (long)place[i].Row * width + place[i].Offset;
            for (int j = 0; j < sequences[i].Length; j++)
            {
                ids[starts[i] + j] = sequences[i][j];
                pos[starts[i] + j] = j;
                segment[starts[i] + j] = i;
            }
        }
        return new PackedBatch
        {
            InputIds = tensor(ids, [rows, width], device: device),
            PositionIds = tensor(pos, [rows, width], device: device),
            Allowed = BlockCausal(segment, rows, width, device),
            Starts = starts,
        };
    }

    /// <summary>
    /// Where <see cref="Pack"/> puts sequences of these lengths (each ≥ 1): first fit, longest first (ties in input
    /// order), into rows as wide as the longest; the row count, the width and each sequence's (row, offset).
    /// </summary>
    public static (int Rows, int Width, (int Row, int Offset)[] Place) Layout(IReadOnlyList<int> lengths)
    {
        if (lengths.Count == 0 || lengths.Any(n => n < 1))
            throw new ArgumentException("Packing needs at least one sequence and no empty ones.");
        int width = lengths.Max();
        var rowFill = new List<int>();
        var place = new (int Row, int Offset)[lengths.Count];
        foreach (int i in Enumerable.Range(0, lengths.Count).OrderByDescending(i => lengths[i]))
        {
            int r = rowFill.FindIndex(f => f + lengths[i] <= width);
            if (r < 0) { r = rowFill.Count; rowFill.Add(0); }
            place[i] = (r, rowFill[r]);
            rowFill[r] += lengths[i];
        }
        return (rowFill.Count, width, place);
    }

    /// <summary>segment [R·L] (sequence of each position, −1 = padding) -> [R, 1, L, L] bool: same segment and k ≤ q.</summary>
    static Tensor BlockCausal(long[] segment, int rows, int width, Device device)
    {
        using var scope = NewDisposeScope();
        var seg = tensor(segment, [rows, width], device: device);
        var same = seg.unsqueeze(2).eq(seg.unsqueeze(1));                                              // [R, L(q), L(k)]
        var causal = ones([width, width], ScalarType.Bool, device).tril();                              // k ≤ q
        return scope.MoveToOuter(same.logical_and(causal).unsqueeze(1));
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        InputIds.Dispose(); PositionIds.Dispose(); Allowed.Dispose();
    }
}
