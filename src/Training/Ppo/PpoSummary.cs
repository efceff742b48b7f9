using Rlhf.Training.Common;

namespace Rlhf.Training.Ppo;

/// <summary>Headline figures of a PPO run (<c>summary.json</c>; keys in docs/outputs.md).</summary>
public sealed record PpoSummary
{
    /// <summary>Always "ppo".</summary>
    public string Stage { get; init; } = "ppo";
    /// <summary>Iterations run.</summary>
    public int Iterations { get; init; }
    /// <summary>Held-out gold score of the SFT model's samples: mean (null on a user's prompts, where there is no gold).</summary>
    public double? SftGoldMean { get; init; }
    /// <summary>Standard deviation of the SFT model's held-out gold scores (null without gold).</summary>
    public double? SftGoldStd { get; init; }
    /// <summary>Held-out mean RM score of SFT samples.</summary>
    public double SftScore { get; init; }
    /// <summary>Held-out gold score of PPO's samples (null without gold).</summary>
    public double? PpoGoldMean { get; init; }
    /// <summary>Held-out mean RM score of PPO's samples.</summary>
    public double PpoScore { get; init; }
    /// <summary>Held-out KL of PPO to the SFT model, nats per response.</summary>
    public double PpoKl { get; init; }
    /// <summary>(PPO gold − SFT gold) / SFT gold std (null without gold).</summary>
    public double? GoldGainInSftStd { get; init; }
    /// <summary>Share of held-out prompts where the RM scores PPO's sample above the SFT model's (ties count half).</summary>
    public double RmWinRateVsSft { get; init; }
    /// <summary>Mean response length of the SFT model's held-out samples, in tokens.</summary>
    public double SftResponseTokens { get; init; }
    /// <summary>Mean response length of PPO's held-out samples, in tokens.</summary>
    public double PpoResponseTokens { get; init; }
    /// <summary>Perplexity of the SFT model on the default task's held-out corpus (null with a ptx_file).</summary>
    public double? CorpusPerplexitySft { get; init; }
    /// <summary>Perplexity of the PPO model on the same text: its rise over <see cref="CorpusPerplexitySft"/> is the alignment tax.</summary>
    public double? CorpusPerplexityPpo { get; init; }
    /// <summary>Best-of-N points from the SFT model.</summary>
    public IReadOnlyList<BestOfNPoint> BestOfN { get; init; } = [];
    /// <summary>Mean seconds per iteration by phase (generate, score, experience, train, sync).</summary>
    public IReadOnlyDictionary<string, double> SecondsPerIteration { get; init; } = new Dictionary<string, double>();
    /// <summary>Rollouts processed per second of iteration time.</summary>
    public double SamplesPerSecond { get; init; }
    /// <summary>Mean |log π_ORT − log π_TorchSharp| per token over the run.</summary>
    public double RolloutLogprobMismatch { get; init; }
    /// <summary>Peak resident memory of the process (MB).</summary>
    public double PeakRssMb { get; init; }
    /// <summary>Parameters the optimizers update: the actor's and the critic's (all of them, or their adapters and the critic's head under LoRA).</summary>
    public long TrainableParameters { get; init; }
    /// <summary>The sft normalisation of the reward model's scores (gain, bias, raw mean and std on SFT samples); null when none applied.</summary>
    public RewardModel.RewardNormalization? RewardNormalization { get; init; }
    /// <summary>Wall-clock seconds of the stage.</summary>
    public double Seconds { get; init; }

    /// <summary>Assembles the summary from the metrics table and the final comparison.</summary>
    public static PpoSummary From(MetricsTable m, Comparison c, double seconds)
    {
        double Mean(string col) => m.Rows.Where(r => r.ContainsKey(col)).Select(r => r[col]).DefaultIfEmpty(double.NaN).Average();
        return new PpoSummary
        {
            Iterations = m.Rows.Count,
            SftGoldMean = c.SftGoldStats?.Mean,
            SftGoldStd = c.SftGoldStats?.Std,
            SftScore = c.SftScores.Average(),
            PpoGoldMean = c.PpoGoldStats?.Mean,
            PpoScore = c.PpoScores.Average(),
            PpoKl = c.PpoKl,
            GoldGainInSftStd = c.GoldGainInSftStd,
            RmWinRateVsSft = c.RmWinRate,
            SftResponseTokens = c.SftLengths.DefaultIfEmpty().Average(),
            PpoResponseTokens = c.PpoLengths.DefaultIfEmpty().Average(),
            CorpusPerplexitySft = c.Corpus?.Sft,
            CorpusPerplexityPpo = c.Corpus?.Ppo,
            BestOfN = c.BestOfN,
            SecondsPerIteration = PhaseSeconds.Names.ToDictionary(k => k, k => Mean("time/" + k)),
            SamplesPerSecond = Mean("samples/s"),
            RolloutLogprobMismatch = Mean("policy/rollout_logprob_mismatch"),
            PeakRssMb = System.Diagnostics.Process.GetCurrentProcess().PeakWorkingSet64 / 1e6,
            Seconds = seconds,
        };
    }
}
