using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Engines;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>Held-out evaluation of the current actor: gold score (null where the task has none), RM score and KL to the SFT
/// model of sampled responses, and their lengths in tokens.</summary>
public sealed record EvalResult(double? Gold, double Score, double Kl, string[] Prompts, string[] Responses, double[]? GoldPer, double[] ScorePer, int[] Lengths);

/// <summary>
/// The held-out evaluation of a PPO run: the actor's samples scored by the reward pipeline (never normalised) and, where
/// the task has one, by its own score (<see cref="TaskGold"/>: the default task's gold, given by the stage), their KL to π_ref, and at the end the comparison with the SFT model and
/// best-of-N (<see cref="Compare"/>). On a user's prompts there is no gold: the comparison is by RM score, RM win rate
/// against the SFT model, KL and response length.
/// </summary>
public sealed class PpoEvaluation(PpoModels models, RewardPipeline rewards, IReadOnlyList<string> prompts, PpoConfig cfg, TaskGold? gold)
{
    readonly int[][] _ids = [.. prompts.Select(p => PromptFormat.PromptIds(models.Tokenizer, p))];

    /// <summary>The gold score of each scored response.</summary>
    public static double[] Gold(ScoredRollouts s, TaskGold gold) =>
        [.. s.Prompts.Select((p, i) => gold(p, s.Texts[i], s.EndedWithEos[i]))];

    /// <summary>
    /// Win rate of <paramref name="a"/> over <paramref name="b"/> on paired scores (same prompts, same order):
    /// (1/n) Σ_i ( 1[a_i &gt; b_i] + ½·1[a_i = b_i] ), the RM win rate of AlpacaFarm-style evaluations with ties split.
    /// </summary>
    public static double WinRate(IReadOnlyList<double> a, IReadOnlyList<double> b)
    {
        if (a.Count != b.Count || a.Count == 0) throw new ArgumentException($"win rate needs paired non-empty scores, got {a.Count} and {b.Count}");
        double wins = 0;
        for (int i = 0; i < a.Count; i++) wins += a[i] > b[i] ? 1 : a[i] == b[i] ? 0.5 : 0;
        return wins / a.Count;
    }

    /// <summary>The actor's held-out samples (weights the engine holds now, fixed seed): mean gold, RM score and KL to π_ref.</summary>
    public EvalResult Evaluate()
    {
        var rolled = RolloutPhase.Sample(models.Rollouts, models.Rollouts.WeightsVersion, [.. prompts], _ids, 0xE7A1, cfg);
        var scored = rewards.Score(rolled, training: false);
        using var exp = Experience.Build(_ids, [.. rolled.Results.Select(r => r.ResponseIds)], models.PadId, models.Device);
        double kl;
        using (no_grad())
        {
            var (lp, lr, v) = ExperienceMaker.ForwardAll(models, exp, cfg.Temperature, cfg.MiniBatch);
            using var k = ((lp - lr) * exp.ResponseMask).sum(1);
            kl = k.mean().item<float>();
            lp.Dispose(); lr.Dispose(); v?.Dispose();
        }
        double[]? g = gold is null ? null : Gold(scored, gold);
        double[] score = [.. scored.RmScores.Select(x => (double)x)];
        return new EvalResult(g?.Average(), score.Average(), kl, [.. prompts], scored.Texts, g, score,
            [.. rolled.Results.Select(r => r.ResponseIds.Length)]);
    }

    /// <summary>
    /// SFT vs best-of-N vs PPO on the held-out prompts: PPO's samples with their KL to SFT; N samples per prompt from
    /// the SFT model (its own rollout engine, weights version 0), of which best-of-N keeps the one the reward model scores highest
    /// (KL = log N − (N − 1)/N, Stiennon et al. 2020); N = 1 is the SFT model itself.
    /// </summary>
    public Comparison Compare()
    {
        var ppo = Evaluate();
        int nMax = cfg.BestOfN.Max();
        var rows = Enumerable.Range(0, nMax).SelectMany(n => prompts.Select((p, i) => (Prompt: p, Ids: _ids[i], N: n))).ToArray();
        RolloutBatch rolled;
        using (var reference = InferenceServices.Sharded(PolicyRollouts.ForActor(cfg.Engine, models.Reference, models.Tokenizer, cfg.SftModel,
                   Path.Combine(cfg.Out, ".reference_engine"), cfg.Threads), cfg.RolloutShardSize))
        {
            InferenceServices.Sync(reference, models.Reference, 0);
            rolled = RolloutPhase.Sample(reference, 0, [.. rows.Select(r => r.Prompt)], [.. rows.Select(r => r.Ids)], 0xB0F, cfg);
        }
        var scored = rewards.Score(rolled, training: false);
        double[]? g = gold is null ? null : Gold(scored, gold);
        var bestOf = new List<BestOfNPoint>();
        foreach (int n in cfg.BestOfN.Distinct().Order())
        {
            double goldSum = 0, score = 0;
            int[] picked = BestOfN.Pick(scored.Scores, prompts.Count, n);
            for (int i = 0; i < prompts.Count; i++)
            {
                goldSum += g?[picked[i]] ?? 0;
                score += scored.RmScores[picked[i]];
            }
            bestOf.Add(new BestOfNPoint(n, g is null ? null : goldSum / prompts.Count, score / prompts.Count, BestOfN.Kl(n)));
        }
        var heldOut = PtxBatches.HeldOutRows(cfg, models.Tokenizer, models.Actor.Config.MaxPositionEmbeddings);
        var corpus = heldOut is null ? null : new CorpusPerplexity(PtxBatches.Perplexity(models.Reference, heldOut, models.Device),
            PtxBatches.Perplexity(models.Actor, heldOut, models.Device), heldOut.Length * (long)(cfg.PtxSeqLen - 1));
        return new Comparison([.. prompts], [.. scored.Texts.Take(prompts.Count)], g is null ? null : [.. g.Take(prompts.Count)],
            [.. scored.RmScores.Take(prompts.Count).Select(x => (double)x)], ppo.Responses, ppo.GoldPer, ppo.ScorePer, ppo.Kl, bestOf, corpus)
        {
            SftLengths = [.. rolled.Results.Take(prompts.Count).Select(r => r.ResponseIds.Length)],
            PpoLengths = ppo.Lengths,
        };
    }
}
