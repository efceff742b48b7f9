using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;

namespace Rlhf.Training.Sft;

/// <summary>The demonstrations an SFT run trains and evaluates on.</summary>
public sealed record SftData(IReadOnlyList<SftExample> Train, IReadOnlyList<SftExample> Eval, int Skipped, bool IsDefaultTask)
{
    /// <summary>From <see cref="SftConfig.TrainFile"/>/<see cref="SftConfig.EvalFile"/>, or the default task's generator.</summary>
    public static SftData Load(SftConfig cfg)
    {
        if (cfg.TrainFile is null)
        {
            var gen = new ReviewGenerator(cfg.Seed);
            var train = gen.SftDemonstrations(DataSplit.SftTrain, cfg.DefaultTrainSize);
            var eval = cfg.EvalFile is null
                ? gen.SftDemonstrations(DataSplit.SftEval, cfg.DefaultEvalSize)
                : DataFiles.ReadSft(cfg.EvalFile, cfg.SkipMalformed).Records;
            return new SftData(train, eval, 0, true);
        }
        var t = DataFiles.ReadSft(cfg.TrainFile, cfg.SkipMalformed);
        var e = cfg.EvalFile is null ? (Records: (IReadOnlyList<SftExample>)[], Skipped: 0) : DataFiles.ReadSft(cfg.EvalFile, cfg.SkipMalformed);
        if (t.Records.Count == 0) throw new InvalidDataException($"{cfg.TrainFile}: no demonstrations.");
        return new SftData(t.Records, e.Records, t.Skipped + e.Skipped, false);
    }
}
