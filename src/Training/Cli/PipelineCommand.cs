using System.CommandLine;
using Rlhf.Training.Common;
using Rlhf.Training.Pipeline;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf pipeline</c>: SFT → RM → PPO on the default task with no arguments.</summary>
internal static class PipelineCommand
{
    public static Command Create()
    {
        var common = new StageOptions();
        var sftFrom = new Option<string?>("--sft-from") { Description = "Use this SFT model folder instead of running SFT." };
        var rmFrom = new Option<string?>("--rm-from") { Description = "Use this reward-model folder instead of running the RM stage." };
        var rounds = new Option<int?>("--rounds")
        {
            Description = "RM -> PPO rounds (default 1). Each later round labels samples of the latest policy, continues the RM on old + new " +
                          "comparisons and runs PPO again from the latest policy, into round2/, round3/, ...; rounds.csv and report.md compare them.",
        };
        var cmd = new Command("pipeline",
            "Run the stages in order into --out (default runs/pipeline): sft/, rm/, ppo/. A stage folder with a summary.json is reused, " +
            "one with a checkpoint is resumed. Stage settings: --set sft.lr=1e-3, --set rm.k=4, --set ppo.iterations=40, or sections \"sft\"/\"rm\"/\"ppo\" in --config.");
        common.AddTo(cmd);
        cmd.Options.Add(sftFrom);
        cmd.Options.Add(rmFrom);
        cmd.Options.Add(rounds);
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var overrides = common.Overrides(r);
            if (r.GetValue(sftFrom) is string s) overrides.Add($"sft_from={StageOptions.Quote(s)}");
            if (r.GetValue(rmFrom) is string m) overrides.Add($"rm_from={StageOptions.Quote(m)}");
            if (r.GetValue(rounds) is int n) overrides.Add($"rounds={n}");
            var cfg = ConfigLoader.Load<PipelineConfig>(r.GetValue(common.Config), overrides);
            var summary = PipelineRunner.Run(cfg, new RunControl { Overwrite = r.GetValue(common.Overwrite) });
            Console.WriteLine(summary.ToJsonString(ConfigLoader.Json));
            return 0;
        }));
        return cmd;
    }
}
