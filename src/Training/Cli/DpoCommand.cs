using System.CommandLine;
using System.Globalization;
using Rlhf.Training.Common;
using Rlhf.Training.Dpo;
using Rlhf.Training.Pipeline;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf dpo</c>: Direct Preference Optimisation from preference pairs or ranked records.</summary>
internal static class DpoCommand
{
    public static Command Create()
    {
        var common = new StageOptions();
        var sft = new Option<string?>("--sft-model") { Description = "SFT model folder: the policy's start and the frozen reference (default runs/sft)." };
        var pairs = new Option<string?>("--pairs") { Description = "Preference pairs (CSV/JSONL/Parquet with prompt, chosen, rejected); default: the embedded task labelled as the RM stage labels it." };
        var rankings = new Option<string?>("--rankings") { Description = "Ranked records (prompt, responses, ranking): all C(K,2) pairs, each prompt weighted once." };
        var evalFile = new Option<string?>("--eval-file") { Description = "Held-out ranked records for implicit-reward accuracy." };
        var evalPairs = new Option<string?>("--eval-pairs") { Description = "Held-out preference pairs for implicit-reward accuracy (any format --pairs reads)." };
        var beta = new Option<double?>("--beta") { Description = "β of the implicit reward β·log π/π_ref (> 0)." };
        var loss = new Option<string?>("--loss") { Description = "sigmoid (DPO, default) or ipo." };
        var epochs = new Option<int?>("--epochs") { Description = "Passes over the comparisons." };
        var lr = new Option<double?>("--lr") { Description = "Peak learning rate." };
        var cmd = new Command("dpo",
            "Direct Preference Optimisation: the policy's implicit reward β·(log π − log π_ref) ranked by a sigmoid (or IPO) loss over preference pairs, " +
            "reference log-probs computed once. Writes the aligned policy (HF folder + onnx/), metrics.csv, loss.png, rewards.png and summary.json.");
        common.AddTo(cmd);
        foreach (Option o in new Option[] { sft, pairs, rankings, evalFile, evalPairs, beta, loss, epochs, lr }) cmd.Options.Add(o);
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var overrides = common.Overrides(r);
            if (r.GetValue(sft) is string s) overrides.Add($"sft_model={StageOptions.Quote(s)}");
            if (r.GetValue(pairs) is string p) overrides.Add($"pairs_file={StageOptions.Quote(p)}");
            if (r.GetValue(rankings) is string k) overrides.Add($"rankings_file={StageOptions.Quote(k)}");
            if (r.GetValue(evalFile) is string e) overrides.Add($"eval_file={StageOptions.Quote(e)}");
            if (r.GetValue(evalPairs) is string ep) overrides.Add($"eval_pairs_file={StageOptions.Quote(ep)}");
            if (r.GetValue(beta) is double b) overrides.Add($"beta={b.ToString("R", CultureInfo.InvariantCulture)}");
            if (r.GetValue(loss) is string l) overrides.Add($"loss={StageOptions.Quote(l)}");
            if (r.GetValue(epochs) is int n) overrides.Add($"epochs={n}");
            if (r.GetValue(lr) is double x) overrides.Add($"lr={x.ToString("R", CultureInfo.InvariantCulture)}");
            var cfg = ConfigLoader.Load<DpoConfig>(r.GetValue(common.Config), overrides);
            return RlhfCommand.RunStage(Stages.Of(cfg), r.GetValue(common.Resume), r.GetValue(common.Overwrite));
        }));
        return cmd;
    }
}
