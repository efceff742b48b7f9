using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;

namespace Rlhf.Training.RewardModel;

/// <summary>
/// One prompt with its K responses and the comparisons among them (winner, loser) — InstructGPT's unit of an RM batch.
/// <see cref="Gold"/> holds a reference utility per response (gold scores or −rank) used for held-out accuracy.
/// </summary>
public sealed record RmGroup(string Prompt, IReadOnlyList<string> Responses, IReadOnlyList<(int W, int L)> Pairs, IReadOnlyList<double> Gold)
{
    /// <summary>All C(K,2) comparisons of a ranked record (rank 0 = best wins).</summary>
    public static RmGroup FromRanked(RankedExample r)
    {
        var pairs = new List<(int, int)>();
        for (int i = 0; i < r.K; i++)
            for (int j = i + 1; j < r.K; j++)
                pairs.Add(r.Ranking[i] < r.Ranking[j] ? (i, j) : (j, i));
        return new RmGroup(r.Prompt, r.Responses, pairs, r.Ranking.Select(x => -(double)x).ToArray());
    }

    /// <summary>A single comparison as a K = 2 group.</summary>
    public static RmGroup FromPair(PreferencePair p) => new(p.Prompt, [p.Chosen, p.Rejected], [(0, 1)], [1.0, 0.0]);
}

/// <summary>K responses sampled for each prompt, with whether each ended with EOS.</summary>
public delegate IReadOnlyList<(string Text, bool EndedWithEos)[]> ResponseSampler(IReadOnlyList<string> prompts, int k, long seed);

/// <summary>The labelled comparisons of an RM run.</summary>
public sealed record RmData(IReadOnlyList<RmGroup> Train, IReadOnlyList<RmGroup> Eval, int Skipped, bool IsDefaultTask)
{
    /// <summary>
    /// From files, or (default task) K responses per prompt sampled from the SFT model: training prompts ranked by the
    /// simulated annotator panel, held-out prompts ranked by the gold scorer. Labelled data is written to
    /// <c>rankings.jsonl</c> and <c>eval_rankings.jsonl</c> in the output folder. <paramref name="trainSplit"/> names the
    /// default task's split the training prompts come from (a later pipeline round labels fresh prompts).
    /// </summary>
    public static RmData Load(RmConfig cfg, ResponseSampler sampler, string trainSplit = DataSets.RmPromptsName)
    {
        if (cfg.RankingsFile is not null || cfg.PairsFile is not null)
        {
            var train = new List<RmGroup>();
            var eval = new List<RmGroup>();
            int skipped = 0;
            if (cfg.RankingsFile is not null)
            {
                var r = DataFiles.ReadRanked(cfg.RankingsFile, cfg.SkipMalformed);
                train.AddRange(r.Records.Select(RmGroup.FromRanked));
                skipped += r.Skipped;
            }
            if (cfg.EvalFile is not null)
            {
                var e = DataFiles.ReadRanked(cfg.EvalFile, cfg.SkipMalformed);
                eval.AddRange(e.Records.Select(RmGroup.FromRanked));
                skipped += e.Skipped;
            }
            foreach (var (file, into) in new[] { (cfg.PairsFile, train), (cfg.EvalPairsFile, eval) })
            {
                if (file is null) continue;
                var p = DataFiles.ReadPreferences(file, cfg.SkipMalformed, cfg.DatasetColumns);
                using var chat = ChatText.TemplateFor(p.Records, cfg.SftModel, file);   // conversations: the SFT model's template
                into.AddRange(p.Records.Select(x => RmGroup.FromPair(ChatText.Rendered(x, chat, file))));
                skipped += p.Skipped;
            }
            if (train.Count == 0) throw new InvalidDataException("No comparisons to train on: the rankings/pairs files are empty.");
            return new RmData(train, eval, skipped, false);
        }

        ulong seed = (ulong)cfg.Seed;
        var panel = AnnotatorPanel.CreateDefault(seed, cfg.Annotators, cfg.AnnotatorNoise);
        var trainPrompts = DataSets.Prompts(seed, trainSplit, cfg.TrainPrompts).Select(p => p.Prompt).ToList();
        var evalPrompts = DataSets.Prompts(seed, DataSets.RmEvalPromptsName, cfg.EvalPrompts).Select(p => p.Prompt).ToList();
        var trainSamples = sampler(trainPrompts, cfg.K, cfg.Seed);
        var evalSamples = sampler(evalPrompts, cfg.K, cfg.Seed + 1);

        var ranked = new List<RankedExample>();
        for (int i = 0; i < trainPrompts.Count; i++)
            ranked.Add(panel.Rank(trainPrompts[i], trainSamples[i].Select(s => s.Text).ToList(), trainSamples[i].Select(s => s.EndedWithEos).ToList()));
        var evalGroups = new List<RmGroup>();
        var evalRanked = new List<RankedExample>();
        for (int i = 0; i < evalPrompts.Count; i++)
        {
            var texts = evalSamples[i].Select(s => s.Text).ToList();
            double[] gold = evalSamples[i].Select(s => GoldScorer.Score(evalPrompts[i], s.Text, s.EndedWithEos).Total).ToArray();
            var r = new RankedExample(evalPrompts[i], texts, AnnotatorPanel.RankByUtility(gold));
            evalRanked.Add(r);
            evalGroups.Add(RmGroup.FromRanked(r) with { Gold = gold });
        }
        DataFiles.WriteRanked(Path.Combine(cfg.Out, "rankings.jsonl"), ranked);
        DataFiles.WriteRanked(Path.Combine(cfg.Out, "eval_rankings.jsonl"), evalRanked);
        return new RmData(ranked.Select(RmGroup.FromRanked).ToList(), evalGroups, 0, true);
    }
}
