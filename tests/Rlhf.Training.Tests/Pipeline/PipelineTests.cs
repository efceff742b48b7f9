using Rlhf.Training.Common;
using System.Text.Json.Nodes;
using Rlhf.Training.Pipeline;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using Rlhf.Training.Tests.Sft;

namespace Rlhf.Training.Tests.Pipeline;

public sealed class PipelineTests
{
    [Fact]
    public void RunsSftRmPpoAndReusesFinishedStages()
    {
        string outDir = Path.Combine(Directory.CreateTempSubdirectory().FullName, "p");
        var cfg = new PipelineConfig
        {
            Out = outDir, Threads = 1, Seed = 2,
            Sft = SftTrainerTests.Tiny("ignored") with { SampleCount = 2, Out = new SftConfig().Out, Seed = new SftConfig().Seed, Threads = 0 },   // the pipeline sets these
            Rm = new RmConfig { TrainPrompts = 8, EvalPrompts = 4, K = 2, PromptsPerBatch = 4, Epochs = 1, MaxNewTokens = 6, MaxSeqLen = 40 },
            Ppo = new PpoConfig { DefaultPrompts = 16, EvalPrompts = 4, Iterations = 2, RolloutBatch = 4, MiniBatch = 4, PpoEpochs = 1, MaxNewTokens = 6, BestOfN = [1, 2] },
        };
        var s = PipelineRunner.Run(cfg, new RunControl { Progress = false });
        Assert.Equal(4, s["sft"]!["steps"]!.GetValue<int>());
        Assert.Equal(2, s["rm"]!["steps"]!.GetValue<int>());
        Assert.Equal(2, s["ppo"]!["iterations"]!.GetValue<int>());
        Assert.True(File.Exists(Path.Combine(outDir, "ppo", "report.md")));
        Assert.True(File.Exists(Path.Combine(outDir, "rm", "model.safetensors")));
        var written = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "summary.json")))!;
        Assert.Equal("pipeline", written["stage"]!.GetValue<string>());

        DateTime before = File.GetLastWriteTimeUtc(Path.Combine(outDir, "ppo", "model.safetensors"));
        PipelineRunner.Run(cfg, new RunControl { Progress = false });     // every stage reused, nothing retrained
        Assert.Equal(before, File.GetLastWriteTimeUtc(Path.Combine(outDir, "ppo", "model.safetensors")));
    }
}
