using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Tests.Ppo;

namespace Rlhf.Training.Tests.Learning;

/// <summary>The reward model learns: on preferences a single word decides, held-out accuracy ends far above chance.</summary>
public sealed class RmLearnsTests
{
    static readonly string[] Prompts = ["The food was", "The staff were", "Our room was", "The film was", "This product is", "The service was"];
    static readonly string[] Good = ["great", "lovely", "excellent", "friendly", "delicious", "wonderful"];
    static readonly string[] Bad = ["awful", "rude", "terrible", "bland", "dirty", "boring"];
    static readonly string[] Adverbs = ["really", "very", "quite", "so"];

    /// <summary>Every (prompt, adverb, good word, bad word) comparison: the response with the good word is preferred.</summary>
    static List<PreferencePair> AllPairs() =>
        [.. from p in Prompts from a in Adverbs from g in Good from b in Bad select new PreferencePair(p, $"{a} {g}.", $"{a} {b}.")];

    [Fact]
    public void LearnsASeparablePreferenceSetWellAboveChance()
    {
        var all = AllPairs();
        var order = Rlhf.Training.Common.SplitMixRandom.Permutation(all.Count, 11);
        var train = order.Take(160).Select(i => all[i]).ToList();
        var heldOut = order.Skip(160).Take(64).Select(i => all[i]).ToList();   // comparisons never trained on
        // half of the held-out records list the preferred response second, so position cannot decide
        var eval = heldOut.Select((p, i) => i % 2 == 0
            ? new RankedExample(p.Prompt, [p.Chosen, p.Rejected], [0, 1])
            : new RankedExample(p.Prompt, [p.Rejected, p.Chosen], [1, 0])).ToList();
        string dir = Directory.CreateTempSubdirectory("rlhf-rm-learns-").FullName;
        DataFiles.WritePreferences(Path.Combine(dir, "train.jsonl"), train);
        DataFiles.WriteRanked(Path.Combine(dir, "eval.jsonl"), eval);

        var cfg = new RmConfig
        {
            Out = Path.Combine(dir, "rm"), SftModel = PpoTrainerTests.Models.Value.Sft, PairsFile = Path.Combine(dir, "train.jsonl"),
            EvalFile = Path.Combine(dir, "eval.jsonl"), Epochs = 3, PromptsPerBatch = 8, MaxSeqLen = 32, Lr = 2e-3,
            EvalEvery = 1000, CheckpointEvery = 0, Threads = 1, Seed = 5,
        };
        var s = RmTrainer.Run(cfg, new RunControl { Progress = false });
        // chance is 0.5; a model that learned "good word beats bad word" gets (nearly) all of them
        Assert.True(s.PairwiseAccuracy >= 0.9, $"held-out pairwise accuracy {s.PairwiseAccuracy:F3} after {s.Steps} steps");
    }
}
