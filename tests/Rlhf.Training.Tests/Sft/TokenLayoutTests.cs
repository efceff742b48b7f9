using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data;
using Rlhf.Training.Data.Tokenizer;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Sft;

/// <summary>
/// The token layout <c>[BOS] prompt response [EOS]</c> pinned by hand-written ids. The tokenizer is the project's own
/// byte-level BPE trained on a corpus where no pair repeats, so it has no merges: pad 0, BOS 1, EOS 2, byte b = 3 + b.
/// </summary>
public sealed class TokenLayoutTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-layout-").FullName;
    readonly TextTokenizer _tok;

    public TokenLayoutTests()
    {
        var bpe = BpeTrainer.Train(["xq"], new BpeTrainerOptions { VocabSize = 300 });
        Assert.Empty(bpe.Merges);
        bpe.Save(_dir);
        _tok = TextTokenizer.Load(_dir);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    const int Bos = 1, Eos = 2;

    /// <summary>Hand encoding without merges: one id per byte, 3 + the byte.</summary>
    static int[] B(string ascii) => [.. ascii.Select(c => 3 + c)];

    [Fact]
    public void SftTokensArePromptThenSpaceResponseThenEos()
    {
        Assert.Equal((Bos, Eos, 0), (_tok.BosId, _tok.EosId, _tok.PadId));
        var e = SftBatch.Tokenize(_tok, new SftExample("the cat", "sat."), 64);
        // [BOS] t h e ␠ c a t | ␠ s a t . [EOS]
        Assert.Equal([Bos, 119, 107, 104, 35, 102, 100, 119, 35, 118, 100, 119, 49, Eos], e.Ids);
        Assert.Equal([Bos, .. B("the cat"), .. B(" sat."), Eos], e.Ids);
        Assert.Equal(8, e.PromptLength);

        // no space before a response that starts with punctuation, and the stored response's leading space is dropped
        Assert.Equal([Bos, .. B("Great"), .. B("!"), Eos], SftBatch.Tokenize(_tok, new SftExample("Great", "!"), 64).Ids);
        Assert.Equal([Bos, .. B("the cat"), .. B(" sat"), Eos], SftBatch.Tokenize(_tok, new SftExample("the cat", "  sat"), 64).Ids);

        // too long: the response is cut (and loses its EOS), the prompt is kept
        var cut = SftBatch.Tokenize(_tok, new SftExample("the cat", "sat."), 10);
        Assert.Equal([Bos, .. B("the cat"), .. B(" s")], cut.Ids);
        Assert.Equal(8, cut.PromptLength);
    }

    [Fact]
    public void SftLossCoversExactlyTheResponseAndEos()
    {
        var e = SftBatch.Tokenize(_tok, new SftExample("ab", "c"), 64);       // [BOS] a b | ␠ c [EOS]
        using var batch = SftBatch.Collate([e], padId: 0, CPU);
        // position t predicts t+1 only for response positions: t=2 -> ␠, t=3 -> c, t=4 -> EOS
        Assert.Equal(new long[] { -100, -100, 3 + ' ', 3 + 'c', Eos, -100 }, batch.Targets.data<long>().ToArray());
        Assert.Equal(3, batch.TargetCount);
    }

    [Fact]
    public void RewardModelAndRolloutUseTheSameLayout()
    {
        // the RM reads the joined sequence: identical to the SFT ids
        int[] joined = PromptFormat.JoinedIds(_tok, "the cat", "sat.", 64);
        Assert.Equal([Bos, .. B("the cat"), .. B(" sat."), Eos], joined);
        var group = RmTrainer.Tokenize(_tok, new RmGroup("the cat", ["sat.", "ran"], [(0, 1)], [0.0, 0.0]), 64);
        Assert.Equal(joined, group.Sequences[0]);
        Assert.Equal([Bos, .. B("the cat"), .. B(" ran"), Eos], group.Sequences[1]);

        // too long for the RM: the prompt loses tokens from its start first; BOS and EOS stay
        Assert.Equal([Bos, .. B("t"), .. B(" sat."), Eos], PromptFormat.JoinedIds(_tok, "the cat", "sat.", 8));
        Assert.Equal([Bos, .. B(" sa"), Eos], PromptFormat.JoinedIds(_tok, "the cat", "sat.", 5));

        // a rollout prompt is [BOS] prompt; its response text drops the separator and special tokens
        Assert.Equal([Bos, .. B("the cat")], PromptFormat.PromptIds(_tok, "the cat"));
        Assert.Equal("sat.", PromptFormat.ResponseText(_tok, [.. B(" sat."), Eos]));
    }
}
