using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data.DefaultTask;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>Held-out evaluation of the current actor: gold score, RM score and KL to the SFT model of sampled responses.</summary>
public sealed record EvalResult(double Gold, double Score, double Kl, string[] Prompts, string[] Responses, double[] GoldPer, double[] ScorePer);

/// <summary>
/// The held-out evaluation of a PPO run on the default task: the actor's samples scored by the reward pipeline (never
/// normalised) and by the task's gold scorer, their KL to π_ref, and at the end the comparison with the SFT model and
/// best-of-N (<see cref="Compare"/>).
/// </summary>
public sealed class PpoEvaluation(PpoModels models, RewardPipeline rewards, IReadOnlyList<string> prompts, PpoConfig cfg)
{
    readonly int[][] _ids = [.. prompts.Select(p => PromptFormat.PromptIds(models.Tokenizer, p))];

    /// <summary>The default task's gold score of each scored response (<see cref="GoldScorer"/>).</summary>
    public static double[] Gold(ScoredRollouts s) =>
        [.. s.Prompts.Select((p, i) => GoldScorer.Score(p, s.Texts[i], s.EndedWithEos[i]).Total)];

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
        double[] gold = Gold(scored);
        double[] score = [.. scored.RmScores.Select(x => (double)x)];
        return new EvalResult(gold.Average(), score.Average(), kl, [.. prompts], scored.Texts, gold, score);
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
        using (var reference = InferenceServices.Sharded(InferenceServices.Rollouts(cfg.Engine, models.Reference, models.Tokenizer, cfg.SftModel,
                   Path.Combine(cfg.Out, ".reference_engine"), cfg.Threads), cfg.RolloutShardSize))
        {
            InferenceServices.Sync(reference, models.Reference, 0);
            rolled = RolloutPhase.Sample(reference, 0, [.. rows.Select(r => r.Prompt)], [.. rows.Select(r => r.Ids)], 0xB0F, cfg);
        }
        var scored = rewards.Score(rolled, training: false);
        double[] gold = Gold(scored);
        var bestOf = new List<BestOfNPoint>();
        foreach (int n in cfg.BestOfN.Distinct().Order())
        {
            double goldSum = 0, score = 0;
            int[] picked = BestOfN.Pick(scored.Scores, prompts.Count, n);
            for (int i = 0; i < prompts.Count; i++)
            {
                goldSum += gold[picked[i]];
                score += scored.RmScores[picked[i]];
            }
            bestOf.Add(new BestOfNPoint(n, goldSum / prompts.Count, score / prompts.Count, BestOfN.Kl(n)));
        }
        var heldOut = PtxBatches.HeldOutRows(cfg, models.Tokenizer, models.Actor.Config.MaxPositionEmbeddings);
        var corpus = heldOut is null ? null : new CorpusPerplexity(PtxBatches.Perplexity(models.Reference, heldOut, models.Device),
            PtxBatches.Perplexity(models.Actor, heldOut, models.Device), heldOut.Length * (long)(cfg.PtxSeqLen - 1));
        return new Comparison([.. prompts], [.. scored.Texts.Take(prompts.Count)], [.. gold.Take(prompts.Count)],
            [.. scored.RmScores.Take(prompts.Count).Select(x => (double)x)], ppo.Responses, ppo.GoldPer, ppo.ScorePer, ppo.Kl, bestOf, corpus);
    }
}
