using System.Text.Json;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>
/// The critic PPO builds from our RM starts on the scale of the scores PPO uses: its mean value at the last token of
/// SFT samples equals the mean of the normalised RM scores (the RM's ONNX export scored by <see cref="RewardScorer"/>,
/// which applies the normalisation from reward_spec.json), while the raw head does not.
/// </summary>
public sealed class CriticScaleTests
{
    [Fact]
    public void CriticFromTheRmStartsAtTheNormalisedRewardMeanOnSftSamples()
    {
        var (sft, rm) = PpoTrainerTests.Models.Value;
        // the SFT samples the RM stage drew and labelled (training and held-out prompts)
        var samples = new[] { "rankings.jsonl", "eval_rankings.jsonl" }
            .SelectMany(f => DataFiles.ReadRanked(Path.Combine(rm, f)).Records)
            .SelectMany(r => r.Responses.Select(y => (r.Prompt, Response: y))).ToArray();
        Assert.True(samples.Length >= 16);

        using var scorer = RewardScorer.Load(Path.Combine(rm, "onnx"), new RewardScorerOptions { Threads = 1 });
        double normalisedMean = scorer.Score([.. samples.Select(s => new RewardRequest(s.Prompt, s.Response))]).Average(x => (double)x);

        var tokenizer = TextTokenizer.Load(sft);
        double MeanLastTokenValue(LlamaForSequenceClassification critic)
        {
            double sum = 0;
            using var noGrad = no_grad();
            foreach (var (p, y) in samples)
            {
                int[] ids = PromptFormat.JoinedIds(tokenizer, p, y, scorer.MaxLength);
                using var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]);
                using var mask = ones_like(input);
                using var v = critic.Scores(input, mask);
                sum += v.item<float>();
            }
            return sum / samples.Length;
        }

        var cfg = new PpoConfig { SftModel = sft, RmModel = rm };
        using var folded = LlamaForSequenceClassification.FromPretrained(rm, CPU, ScalarType.Float32, scoreBias: true);
        RewardPipeline.FoldIntoCritic(folded, cfg, calibration: null);
        using var raw = LlamaForSequenceClassification.FromPretrained(rm, CPU, ScalarType.Float32);
        double foldedMean = MeanLastTokenValue(folded), rawMean = MeanLastTokenValue(raw);

        var norm = JsonSerializer.Deserialize<RewardNormalization>(File.ReadAllText(Path.Combine(rm, RewardNormalization.FileName)), ConfigLoader.Json)!;
        string trace = $"normalised RM mean {normalisedMean:F4}, folded critic {foldedMean:F4}, raw head {rawMean:F4} (gain {norm.Gain:F4}, bias {norm.Bias:F4})";
        Assert.True(Math.Abs(foldedMean - normalisedMean) < 0.05, trace);
        Assert.Equal(norm.Apply(rawMean), foldedMean, 3);              // V = gain·v + bias, by hand
        Assert.True(Math.Abs(rawMean - normalisedMean) > 0.05, "the tiny RM's raw scale must differ for this test to mean anything: " + trace);
    }

    [Fact]
    public void ComposeAppliesTheFirstMapThenTheSecond()
    {
        var first = new RewardNormalization(2, -1, 0, 0);
        var second = new RewardNormalization(0.5, 3, 0, 0);
        var (g, b) = RewardPipeline.Compose(first, second);
        foreach (double x in new[] { -1.5, 0, 2.25 })
            Assert.Equal(second.Apply(first.Apply(x)), g * x + b, 12);
        Assert.Equal((2.0, -1.0), RewardPipeline.Compose(first, null));
    }
}
