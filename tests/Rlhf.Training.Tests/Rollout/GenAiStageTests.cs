using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Tests.Ppo;
using Rlhf.Inference.Rollout;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>The RM stage's labelling with <c>engine: genai</c>: K sampled responses per prompt, reproducible run to run.</summary>
public sealed class GenAiStageTests
{
    static RmConfig Tiny(string sft) => new()
    {
        Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "rm"), SftModel = sft, TrainPrompts = 6, EvalPrompts = 2, K = 3,
        PromptsPerBatch = 3, MaxNewTokens = 8, MaxSeqLen = 40, Threads = 1, Engine = RolloutEngineKind.Genai,
    };

    [Fact]
    public void RmLabellingSamplesKResponsesPerPromptWithGenAi()
    {
        string sft = PpoTrainerTests.Models.Value.Sft;
        var a = Tiny(sft);
        var b = Tiny(sft);
        RmTrainer.Run(a, new RunControl { Progress = false });
        RmTrainer.Run(b, new RunControl { Progress = false });
        var ra = DataFiles.ReadRanked(Path.Combine(a.Out, "rankings.jsonl")).Records;
        var rb = DataFiles.ReadRanked(Path.Combine(b.Out, "rankings.jsonl")).Records;
        Assert.Equal(6, ra.Count);
        Assert.All(ra, r => Assert.Equal(3, r.Responses.Count));
        Assert.Contains(ra, r => r.Responses.Distinct().Count() > 1);   // sampled, not greedy copies
        Assert.Equal(ra.SelectMany(r => r.Responses), rb.SelectMany(r => r.Responses));   // seeds decide the samples
        Assert.False(Directory.Exists(Path.Combine(a.Out, ".rollout_engine")));
    }
}
