using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

public sealed class PackedBatchTests
{
    [Fact]
    public void PacksLongestFirstIntoRowsOfTheLongestSequenceWithABlockCausalMask()
    {
        // lengths 3, 5, 2, 2 into rows of 5: [5] · [3 2] · [2] (first fit, longest first, ties in input order)
        using var p = PackedBatch.Pack([[11, 12, 13], [21, 22, 23, 24, 25], [31, 32], [41, 42]], padId: 0, CPU);
        Assert.Equal(new long[] { 3, 5 }, p.InputIds.shape);
        Assert.Equal(new long[] { 21, 22, 23, 24, 25, 11, 12, 13, 31, 32, 41, 42, 0, 0, 0 }, p.InputIds.data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 0, 1, 0, 0, 0 }, p.PositionIds.data<long>().ToArray());
        Assert.Equal(new long[] { 5, 0, 8, 10 }, p.Starts);
        // row 1 holds sequences 0 (columns 0-2) and 2 (columns 3-4): each query sees its own earlier tokens only
        bool[] row1 = p.Allowed[1, 0].data<bool>().ToArray();
        bool[][] expected =
        [
            [true, false, false, false, false],
            [true, true, false, false, false],
            [true, true, true, false, false],
            [false, false, false, true, false],
            [false, false, false, true, true],
        ];
        Assert.Equal(expected.SelectMany(r => r), row1);
    }

    [Fact]
    public void FromPaddedPacksTheRealTokensOfLeftAndRightPaddedRowsAndMapsTheirPositions()
    {
        // row 0 left-padded [0 0 5 6], row 1 right-padded [7 8 9 0], row 2 both [0 4 0 0]
        using var ids = tensor(new long[] { 0, 0, 5, 6, 7, 8, 9, 0, 0, 4, 0, 0 }, [3, 4]);
        using var mask = tensor(new long[] { 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0 }, [3, 4]);
        using var p = PackedBatch.FromPadded(ids, mask);
        // width 3: [7 8 9] · [5 6 4]
        Assert.Equal(new long[] { 7, 8, 9, 5, 6, 4 }, p.InputIds.data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1, 2, 0, 1, 0 }, p.PositionIds.data<long>().ToArray());
        Assert.Equal(new long[] { -1, -1, 3, 4, 0, 1, 2, -1, -1, 5, -1, -1 }, p.PaddedToFlat);
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("mistral_window")]
    [InlineData("qwen2_window")]
    public void PackedHiddenStatesAndTheirGradientsEqualEachSequenceRunAlone(string variant)
    {
        using var model = TinyModels.Randomized(TinyModels.Config(variant), seed: 3);
        model.eval();
        long[][] seqs = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15], [16, 17, 18, 19]];
        using var packed = PackedBatch.Pack(seqs, padId: 0, CPU);
        var h = model.HiddenStates(packed);                                   // [R, L, H]
        long hidden = h.shape[2];
        var flat = h.reshape(-1, hidden);
        Tensor total = zeros(1);
        for (int i = 0; i < seqs.Length; i++)
        {
            using var ids = tensor(seqs[i], [1, seqs[i].Length]);
            using var mask = ones_like(ids);
            using var pos = arange(seqs[i].Length, dtype: ScalarType.Int64).unsqueeze(0);
            var alone = model.HiddenStates(ids, mask, pos)[0];               // [n, H]
            var inPack = flat.narrow(0, packed.Starts[i], seqs[i].Length);
            Assert.True((alone - inPack).abs().max().item<float>() < 1e-5f, $"sequence {i} differs when packed");
            total = total + (inPack * (i + 1)).sum();
        }
        total.backward();
        var packedGrads = model.parameters().Select(p => p.grad?.clone()).ToList();   // lm_head gets none: hidden states only
        model.zero_grad();
        Tensor reference = zeros(1);
        for (int i = 0; i < seqs.Length; i++)
        {
            using var ids = tensor(seqs[i], [1, seqs[i].Length]);
            using var mask = ones_like(ids);
            using var pos = arange(seqs[i].Length, dtype: ScalarType.Int64).unsqueeze(0);
            reference = reference + (model.HiddenStates(ids, mask, pos) * (i + 1)).sum();
        }
        reference.backward();
        foreach (var (p, g) in model.parameters().Zip(packedGrads))
            if (g is not null) Assert.True((p.grad! - g).abs().max().item<float>() < 1e-4f, "gradients differ");
        Assert.Contains(packedGrads, g => g is not null);
    }
}
