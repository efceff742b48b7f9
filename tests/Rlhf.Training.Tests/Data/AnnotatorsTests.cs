using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;

namespace Rlhf.Training.Tests.Data;

public sealed class AnnotatorsTests
{
    /// <summary>K = 4 candidate responses per prompt: continuations of other generated reviews.</summary>
    static IReadOnlyList<(string Prompt, string[] Responses)> Batches(int prompts, int k = 4)
    {
        var sft = DataSets.SftExamples(9, "annotator_test", prompts * k);
        return Enumerable.Range(0, prompts)
            .Select(p => (sft[p * k].Prompt, Enumerable.Range(0, k).Select(j => sft[p * k + j].Response).ToArray()))
            .ToArray();
    }

    [Fact]
    public void NoiseFreeAnnotatorsReproduceTheGoldRanking()
    {
        var panel = AnnotatorPanel.NoiseFree(5);
        foreach (var (prompt, responses) in Batches(100))
        {
            double[] gold = responses.Select(r => GoldScorer.Reward(prompt, r)).ToArray();
            var ranked = panel.Rank(prompt, responses);
            Assert.Equal(AnnotatorPanel.RankByUtility(gold), ranked.Ranking);
            for (int i = 0; i < gold.Length; i++)
                for (int j = 0; j < gold.Length; j++)
                    if (gold[i] > gold[j]) Assert.True(ranked.Ranking[i] < ranked.Ranking[j]);
        }
    }

    [Fact]
    public void NoisyPanelAgreesWithGoldOnMostPairs()
    {
        var panel = AnnotatorPanel.CreateDefault(seed: 3);
        Assert.Equal(5, panel.Annotators.Count);
        int agree = 0, total = 0, singleAgree = 0;
        foreach (var (prompt, responses) in Batches(200))
        {
            double[] gold = responses.Select(r => GoldScorer.Reward(prompt, r)).ToArray();
            var ranked = panel.Rank(prompt, responses);
            int[] first = panel.RankEach(prompt, responses)[0];
            for (int i = 0; i < gold.Length; i++)
                for (int j = i + 1; j < gold.Length; j++)
                {
                    if (Math.Abs(gold[i] - gold[j]) < 1e-9) continue;
                    total++;
                    if ((gold[i] > gold[j]) == (ranked.Ranking[i] < ranked.Ranking[j])) agree++;
                    if ((gold[i] > gold[j]) == (first[i] < first[j])) singleAgree++;
                }
        }
        double panelAgreement = (double)agree / total, singleAgreement = (double)singleAgree / total;
        Assert.True(panelAgreement > 0.8, $"panel agreement {panelAgreement:F3}");
        Assert.True(singleAgreement > 0.7, $"single annotator agreement {singleAgreement:F3}");
        Assert.True(panelAgreement < 1.0, "noise should flip some close pairs");
    }

    [Fact]
    public void BordaMatchesAHandComputedExample()
    {
        // rankings[a][i] = rank annotator a gives item i. Points K−1−r:
        // item0: 0+0+2 = 2, item1: 2+1+1 = 4, item2: 1+2+0 = 3 → order 1, 2, 0.
        int[][] rankings = [[2, 0, 1], [2, 1, 0], [0, 1, 2]];
        Assert.Equal([2, 0, 1], AnnotatorPanel.Borda(rankings));

        // Tie between items 0 and 1 (3 points each) → the lower index wins.
        Assert.Equal([0, 1, 2], AnnotatorPanel.Borda([[0, 1, 2], [1, 0, 2]]));
        Assert.Equal([1, 0, 2], AnnotatorPanel.Borda([[1, 0, 2], [1, 0, 2], [0, 1, 2]]));
        Assert.Throws<ArgumentException>(() => AnnotatorPanel.Borda([[0, 1], [0, 1, 2]]));
    }

    [Fact]
    public void RankingsAreSeededAndIndependentOfCallOrder()
    {
        var batches = Batches(20);
        var a = AnnotatorPanel.CreateDefault(seed: 5);
        var b = AnnotatorPanel.CreateDefault(seed: 5);
        var forward = batches.Select(x => a.Rank(x.Prompt, x.Responses)).ToArray();
        var backward = batches.Reverse().Select(x => b.Rank(x.Prompt, x.Responses)).Reverse().ToArray();
        Assert.Equal(forward, backward);

        var c = AnnotatorPanel.CreateDefault(seed: 6);
        Assert.NotEqual(a.Annotators.Select(x => x.Sigma), c.Annotators.Select(x => x.Sigma));
    }

    [Fact]
    public void UtilityIsGoldPlusBiasPlusNoise()
    {
        var biased = new Annotator(0, 0, 0.1, new Dictionary<string, double> { ["soup"] = 0.5 });
        var panel = new AnnotatorPanel([biased], 1);
        string prompt = "We ordered the", response = "soup and it was good.";
        double[][] u = panel.Utilities(prompt, [response, response]);
        // 5 response words: length bias 0.1·(5 − 15) = −1; "soup" +0.5.
        Assert.Equal(GoldScorer.Reward(prompt, response) - 1 + 0.5, u[0][0], 12);
    }

    [Fact]
    public void TruncatedResponsesRankBelowFinishedOnes()
    {
        var panel = AnnotatorPanel.NoiseFree(3);
        string prompt = "The staff was";
        var ranked = panel.Rank(prompt, ["friendly and the room was clean.", "friendly and the room was clean."], [false, true]);
        Assert.Equal([1, 0], ranked.Ranking);
    }
}
