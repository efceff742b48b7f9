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
        var modelConfig = new Option<string?>("--model-config") { Description = "Architecture of the fresh SFT model (sft.model_config), e.g. models/small/config.json." };
        var precision = new Option<string?>("--precision") { Description = "fp32, bf16 or auto for every stage (sft.precision, rm.precision, ppo.precision, dpo.precision)." };
        var rounds = new Option<int?>("--rounds")
        {
            Description = "RM -> PPO rounds (default 1). Each later round labels samples of the latest policy, continues the RM on old + new " +
                          "comparisons and runs PPO again from the latest policy, into round2/, round3/, ...; rounds.csv and report.md compare them.",
        };
        var algorithm = new Option<string?>("--algorithm") { Description = "What follows SFT: ppo (RM + PPO, default), rloo, grpo, dr_grpo, reinforce_pp (RM + a critic-free estimator) or dpo (DPO on the labelled comparisons, no RM)." };
        var cmd = new Command("pipeline",
            "Run the stages in order into --out (default runs/pipeline): sft/, rm/, ppo/. A stage folder with a summary.json is reused, " +
            "one with a checkpoint is resumed. Stage settings: --set sft.lr=1e-3, --set rm.k=4, --set ppo.iterations=40, or sections \"sft\"/\"rm\"/\"ppo\" in --config.");
        common.AddTo(cmd);
        cmd.Options.Add(sftFrom);
        cmd.Options.Add(rmFrom);
        cmd.Options.Add(modelConfig);
        cmd.Options.Add(precision);
        cmd.Options.Add(rounds);
        cmd.Options.Add(algorithm);
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var overrides = common.Overrides(r);
            if (r.GetValue(sftFrom) is string s) overrides.Add($"sft_from={StageOptions.Quote(s)}");
            if (r.GetValue(rmFrom) is string m) overrides.Add($"rm_from={StageOptions.Quote(m)}");
            if (r.GetValue(modelConfig) is string mc) overrides.Add($"sft.model_config={StageOptions.Quote(mc)}");
            if (r.GetValue(precision) is string p)
                foreach (string stage in new[] { "sft", "rm", "ppo", "dpo" }) overrides.Add($"{stage}.precision={p}");
            if (r.GetValue(rounds) is int n) overrides.Add($"rounds={n}");
            if (r.GetValue(algorithm) is string a) overrides.Add($"algorithm={StageOptions.Quote(a)}");
            var cfg = ConfigLoader.Load<PipelineConfig>(r.GetValue(common.Config), overrides);
            return RlhfCommand.RunStage(Stages.Of(cfg), resume: false, r.GetValue(common.Overwrite));   // the pipeline resumes its stages itself
        }));
        return cmd;
    }
}
