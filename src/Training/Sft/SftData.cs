using Rlhf.Training.Data;

namespace Rlhf.Training.Sft;

/// <summary>The demonstrations an SFT run trains and evaluates on.</summary>
public sealed record SftData(IReadOnlyList<SftExample> Train, IReadOnlyList<SftExample> Eval, int Skipped, bool IsDefaultTask)
{
    /// <summary>From <see cref="SftConfig.TrainFile"/>/<see cref="SftConfig.EvalFile"/>, or the default task's generator.</summary>
    public static SftData Load(SftConfig cfg)
    {
        if (cfg.TrainFile is null)
        {
            ulong seed = (ulong)cfg.Seed;
            var train = DataSets.SftExamples(seed, DataSets.SftTrainName, cfg.DefaultTrainSize);
            var eval = cfg.EvalFile is null
                ? DataSets.SftExamples(seed, DataSets.SftEvalName, cfg.DefaultEvalSize)
                : Read(cfg.EvalFile, cfg).Records;
            return new SftData(train, eval, 0, true);
        }
        var t = Read(cfg.TrainFile, cfg);
        var e = cfg.EvalFile is null ? new DataRead<SftExample>([], 0) : Read(cfg.EvalFile, cfg);
        if (t.Records.Count == 0) throw new InvalidDataException($"{cfg.TrainFile}: no demonstrations.");
        return new SftData(t.Records, e.Records, t.Skipped + e.Skipped, false);
    }

    static DataRead<SftExample> Read(string file, SftConfig cfg) => DataFiles.ReadSft(file, cfg.SkipMalformed, cfg.DatasetColumns);

    /// <summary>
    /// The chat template conversational demonstrations are rendered with: <c>init_from</c>'s (the chat model being
    /// fine-tuned, whose template it is served with); null when every row is flat. A fresh model has no template.
    /// </summary>
    public static Inference.Tokenization.ChatTemplate? Template(SftConfig cfg, SftData data)
    {
        var rows = data.Train.Concat(data.Eval);
        string file = cfg.TrainFile ?? cfg.EvalFile ?? "";
        if (cfg.InitFrom is null && rows.Any(r => r.IsConversational))
            throw new InvalidDataException($"{file}: its rows are conversations, which become text through a chat model's template; "
                + "set init_from to the HF chat model folder to fine-tune (a fresh model has no chat template).");
        return cfg.InitFrom is null ? null : ChatText.TemplateFor(rows, cfg.InitFrom, file);
    }
}
