using Rlhf.Training.Common;
using Rlhf.Training.Data.DefaultTask;

namespace Rlhf.Training.Data;

/// <summary>How many records <see cref="DataSets.WriteDefault"/> writes for each split of the default task.</summary>
public sealed record DefaultDataSizes
{
    /// <summary>SFT demonstrations for training.</summary>
    public int SftTrain { get; init; } = 20_000;
    /// <summary>Held-out SFT demonstrations (loss/perplexity).</summary>
    public int SftEval { get; init; } = 1_000;
    /// <summary>Prompts whose sampled responses the annotators rank, for reward-model training.</summary>
    public int RmPrompts { get; init; } = 4_000;
    /// <summary>Held-out prompts for reward-model pairwise accuracy.</summary>
    public int RmEvalPrompts { get; init; } = 500;
    /// <summary>Prompts for PPO rollouts.</summary>
    public int PpoPrompts { get; init; } = 4_000;
    /// <summary>Held-out prompts for evaluating the PPO policy (gold reward).</summary>
    public int PpoEvalPrompts { get; init; } = 500;
    /// <summary>Full review texts for training the tokenizer.</summary>
    public int Corpus { get; init; } = 50_000;

    public void Validate()
    {
        foreach (var (name, n) in new[]
        {
            (nameof(SftTrain), SftTrain), (nameof(SftEval), SftEval), (nameof(RmPrompts), RmPrompts),
            (nameof(RmEvalPrompts), RmEvalPrompts), (nameof(PpoPrompts), PpoPrompts),
            (nameof(PpoEvalPrompts), PpoEvalPrompts), (nameof(Corpus), Corpus),
        })
        {
            if (n < 0) throw new ArgumentException($"DefaultDataSizes.{name} must be ≥ 0, got {n}");
        }
    }

    /// <summary>Tiny sizes for tests and smoke runs.</summary>
    public static DefaultDataSizes Tiny { get; } = new()
    {
        SftTrain = 64, SftEval = 16, RmPrompts = 16, RmEvalPrompts = 8, PpoPrompts = 16, PpoEvalPrompts = 8, Corpus = 128,
    };
}

/// <summary>The files <see cref="DataSets.WriteDefault"/> wrote.</summary>
public sealed record DefaultDataPaths(
    string SftTrain,
    string SftEval,
    string RmPrompts,
    string RmEvalPrompts,
    string PpoPrompts,
    string PpoEvalPrompts,
    string Corpus);

/// <summary>The default task's data sets. Every split has its own generator stream, seeded by
/// Derive(seed, split name), so the splits are independent draws and any one of them can be regenerated alone.</summary>
public static class DataSets
{
    public const string SftTrainName = "sft_train";
    public const string SftEvalName = "sft_eval";
    public const string RmPromptsName = "rm_prompts";
    public const string RmEvalPromptsName = "rm_eval_prompts";
    public const string PpoPromptsName = "ppo_prompts";
    public const string PpoEvalPromptsName = "ppo_eval_prompts";
    public const string CorpusName = "corpus";
    public const string CorpusEvalName = "corpus_eval";

    /// <summary>The seed of one split's generator.</summary>
    public static ulong SplitSeed(ulong seed, string split) => Inference.Rollout.Rng.Derive(seed, split);

    /// <summary>SFT demonstrations of a split: opening words as prompt, the rest of the review as response.</summary>
    public static IReadOnlyList<SftExample> SftExamples(ulong seed, string split, int count, ReviewGeneratorOptions? options = null)
    {
        var g = new ReviewGenerator(SplitSeed(seed, split), options);
        return Enumerable.Range(0, count).Select(_ => g.NextSft()).ToArray();
    }

    /// <summary>Prompts of a split: opening words of fresh reviews.</summary>
    public static IReadOnlyList<PromptExample> Prompts(ulong seed, string split, int count, ReviewGeneratorOptions? options = null)
    {
        var g = new ReviewGenerator(SplitSeed(seed, split), options);
        return Enumerable.Range(0, count).Select(_ => g.NextPrompt()).ToArray();
    }

    /// <summary>Full review texts of a split (tokenizer corpus).</summary>
    public static IReadOnlyList<string> Corpus(ulong seed, int count, ReviewGeneratorOptions? options = null) =>
        new ReviewGenerator(SplitSeed(seed, CorpusName), options).Generate(count).Select(r => r.Text).ToArray();

    /// <summary>Held-out review texts of the corpus's distribution (their own split: no ptx or tokenizer text among them).</summary>
    public static IReadOnlyList<string> HeldOutCorpus(ulong seed, int count, ReviewGeneratorOptions? options = null) =>
        new ReviewGenerator(SplitSeed(seed, CorpusEvalName), options).Generate(count).Select(r => r.Text).ToArray();

    /// <summary>Writes sft_train, sft_eval, rm_prompts, rm_eval_prompts, ppo_prompts, ppo_eval_prompts (as .csv or
    /// .jsonl) and corpus.txt (one review per line) into <paramref name="folder"/>.</summary>
    public static DefaultDataPaths WriteDefault(
        string folder, ulong seed, DefaultDataSizes? sizes = null, DataFormat format = DataFormat.Jsonl,
        ReviewGeneratorOptions? options = null)
    {
        sizes ??= new DefaultDataSizes();
        sizes.Validate();
        Directory.CreateDirectory(folder);
        string ext = format == DataFormat.Csv ? ".csv" : ".jsonl";
        string P(string name) => Path.Combine(folder, name + ext);

        var paths = new DefaultDataPaths(
            P(SftTrainName), P(SftEvalName), P(RmPromptsName), P(RmEvalPromptsName), P(PpoPromptsName),
            P(PpoEvalPromptsName), Path.Combine(folder, CorpusName + ".txt"));
        DataFiles.WriteSft(paths.SftTrain, SftExamples(seed, SftTrainName, sizes.SftTrain, options));
        DataFiles.WriteSft(paths.SftEval, SftExamples(seed, SftEvalName, sizes.SftEval, options));
        DataFiles.WritePrompts(paths.RmPrompts, Prompts(seed, RmPromptsName, sizes.RmPrompts, options));
        DataFiles.WritePrompts(paths.RmEvalPrompts, Prompts(seed, RmEvalPromptsName, sizes.RmEvalPrompts, options));
        DataFiles.WritePrompts(paths.PpoPrompts, Prompts(seed, PpoPromptsName, sizes.PpoPrompts, options));
        DataFiles.WritePrompts(paths.PpoEvalPrompts, Prompts(seed, PpoEvalPromptsName, sizes.PpoEvalPrompts, options));
        DataFiles.WriteLines(paths.Corpus, Corpus(seed, sizes.Corpus, options));
        return paths;
    }
}
