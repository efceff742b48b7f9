using System.CommandLine;
using Rlhf.Training.Common;
using Rlhf.Training.Pipeline;
using Rlhf.Training.Ppo;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf ppo</c>: PPO with a per-token KL penalty against the SFT model.</summary>
internal static class PpoCommand
{
    public static Command Create()
    {
        var common = new StageOptions();
        var sft = new Option<string?>("--sft-model") { Description = "SFT model folder: the actor's start and the frozen reference (default runs/sft)." };
        var rm = new Option<string?>("--rm-model") { Description = "Our reward-model folder: the critic's start and, via its onnx/ export, the scorer (default runs/rm, none when --reward-model is given alone)." };
        var reward = new Option<string?>("--reward-model") { Description = "Optimise this ONNX reward model instead (folder or .onnx; ours or external with its tokenizer and optional reward_spec.json); alone, the critic starts from the SFT model and the scores are normalised on SFT samples." };
        var template = new Option<string?>("--template") { Description = "How the reward model reads prompt and response: auto, joined, pair or text (default: its reward_spec.json's)." };
        var prompts = new Option<string?>("--prompts") { Description = "Prompts file (CSV/JSONL with a prompt column); default: the embedded task's PPO prompts." };
        var iterations = new Option<int?>("--iterations") { Description = "PPO iterations (rollout, score, update, sync)." };
        var engine = new Option<string?>("--engine") { Description = "ort (our ONNX Runtime engine, default), genai (ONNX Runtime GenAI, weights fed as graph inputs after every update) or torch." };
        var rolloutEndpoints = new Option<string?>("--rollout-endpoints") { Description = "Comma-separated rollout replicas (rlhf serve rollout), e.g. http://127.0.0.1:7001,http://127.0.0.1:7002, or dns:///name:port (re-resolved every iteration, one replica per address); they generate instead of the in-process engine." };
        var rewardUrl = new Option<string?>("--reward-url") { Description = "An external OpenRLHF-style reward server, the full URL (e.g. http://127.0.0.1:5000/get_reward): POST {query, prompts} -> {rewards}; deadlines and bounded retries (service_timeout_seconds)." };
        var rewardEndpoint = new Option<string?>("--reward-endpoint") { Description = "A reward replica (rlhf serve reward), e.g. http://127.0.0.1:7101; it scores instead of the in-process scorer." };
        var estimator = new Option<string?>("--advantage-estimator") { Description = "gae (PPO with a critic, default), rloo, grpo, dr_grpo or reinforce_pp (critic-free: no critic is trained or written)." };
        var samples = new Option<int?>("--n-samples-per-prompt") { Description = "Samples per prompt k; each iteration takes rollout_batch / k prompts (rloo, grpo and dr_grpo need k ≥ 2)." };
        var cmd = new Command("ppo",
            "PPO as in InstructGPT: rollouts on ONNX Runtime, rewards −β·KL per token plus the RM score at the last token, GAE, " +
            "clipped policy and value losses (or a critic-free estimator: rloo, grpo, dr_grpo, reinforce_pp), optional PPO-ptx, " +
            "in-memory weight sync after every update. Writes the aligned policy (HF folder + onnx/), critic/ (gae), metrics.csv, reward.png, kl.png, losses.png, report.md, report.png and summary.json.");
        common.AddTo(cmd);
        foreach (Option o in new Option[] { sft, rm, reward, template, prompts, iterations, engine, rolloutEndpoints, rewardEndpoint, rewardUrl, estimator, samples }) cmd.Options.Add(o);
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var overrides = common.Overrides(r);
            if (r.GetValue(sft) is string s) overrides.Add($"sft_model={StageOptions.Quote(s)}");
            if (r.GetValue(rm) is string m) overrides.Add($"rm_model={StageOptions.Quote(m)}");
            if (r.GetValue(reward) is string w) overrides.Add($"reward_model={StageOptions.Quote(w)}");
            if (r.GetValue(template) is string t) overrides.Add($"reward_template={StageOptions.Quote(ScoreCommand.ParseTemplate(t).ToString().ToLowerInvariant())}");
            if (r.GetValue(prompts) is string p) overrides.Add($"prompts_file={StageOptions.Quote(p)}");
            if (r.GetValue(iterations) is int n) overrides.Add($"iterations={n}");
            if (r.GetValue(engine) is string e) overrides.Add($"engine={StageOptions.Quote(e)}");
            if (r.GetValue(estimator) is string est) overrides.Add($"advantage_estimator={StageOptions.Quote(est)}");
            if (r.GetValue(samples) is int k) overrides.Add($"n_samples_per_prompt={k}");
            if (r.GetValue(rolloutEndpoints) is string re)
                overrides.Add("rollout_endpoints=" + System.Text.Json.JsonSerializer.Serialize(re.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)));
            if (r.GetValue(rewardEndpoint) is string we) overrides.Add($"reward_endpoint={StageOptions.Quote(we)}");
            if (r.GetValue(rewardUrl) is string wu) overrides.Add($"reward_url={StageOptions.Quote(wu)}");
            var cfg = ConfigLoader.Load<PpoConfig>(r.GetValue(common.Config), overrides);
            return RlhfCommand.RunStage(Stages.Of(cfg), r.GetValue(common.Resume), r.GetValue(common.Overwrite));
        }));
        return cmd;
    }
}
