using System.CommandLine;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Pipeline;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using static TorchSharp.torch;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf rm</c> (train a reward model) and <c>rlhf rm eval</c> (its accuracy on a preference file).</summary>
internal static class RmCommand
{
    public static Command Create()
    {
        var common = new StageOptions();
        var sft = new Option<string?>("--sft-model") { Description = "SFT model folder to start from and sample from (default runs/sft)." };
        var rankings = new Option<string?>("--rankings") { Description = "Ranked records (prompt,responses,ranking) to train on instead of sampling and simulated annotators." };
        var pairs = new Option<string?>("--pairs") { Description = "Preference pairs (prompt,chosen,rejected) to train on." };
        var evalFile = new Option<string?>("--eval-file") { Description = "Held-out ranked records for accuracy." };
        var evalPairs = new Option<string?>("--eval-pairs") { Description = "Held-out preference pairs for accuracy (any format --pairs reads)." };
        var k = new Option<int?>("--k") { Description = "Responses sampled and ranked per prompt (2–9)." };
        var prompts = new Option<int?>("--prompts") { Description = "Prompts to label (default task)." };
        var cmd = new Command("rm",
            "Train a reward model: K responses per prompt from the SFT model ranked by simulated annotators (or your own " +
            "rankings/pairs), pairwise loss over all C(K,2) comparisons of a prompt in one batch, normalisation on SFT samples, " +
            "ONNX export. Writes an HF sequence-classification folder, rankings.jsonl, metrics.csv, loss.png, rewards.png, summary.json.");
        common.AddTo(cmd);
        foreach (Option o in new Option[] { sft, rankings, pairs, evalFile, evalPairs, k, prompts }) cmd.Options.Add(o);
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var overrides = common.Overrides(r);
            if (r.GetValue(sft) is string s) overrides.Add($"sft_model={StageOptions.Quote(s)}");
            if (r.GetValue(rankings) is string rk) overrides.Add($"rankings_file={StageOptions.Quote(rk)}");
            if (r.GetValue(pairs) is string p) overrides.Add($"pairs_file={StageOptions.Quote(p)}");
            if (r.GetValue(evalFile) is string e) overrides.Add($"eval_file={StageOptions.Quote(e)}");
            if (r.GetValue(evalPairs) is string ep) overrides.Add($"eval_pairs_file={StageOptions.Quote(ep)}");
            if (r.GetValue(k) is int kk) overrides.Add($"k={kk}");
            if (r.GetValue(prompts) is int n) overrides.Add($"train_prompts={n}");
            var cfg = ConfigLoader.Load<RmConfig>(r.GetValue(common.Config), overrides);
            return RlhfCommand.RunStage(Stages.Of(cfg), r.GetValue(common.Resume), r.GetValue(common.Overwrite));
        }));
        cmd.Subcommands.Add(CreateEval());
        return cmd;
    }

    static Command CreateEval()
    {
        var model = new Option<string>("--model") { Description = "Reward model folder (HF sequence classification).", Required = true };
        var input = new Option<string>("--input") { Description = "Preference pairs (prompt,chosen,rejected) or ranked records (prompt,responses,ranking), CSV or JSONL.", Required = true };
        var ranked = new Option<bool>("--ranked") { Description = "The input holds ranked records rather than pairs." };
        var device = new Option<string>("--device") { Description = "cpu or cuda.", DefaultValueFactory = _ => "cpu" };
        var cmd = new Command("eval", "Pairwise accuracy of a reward model on a preference file.") { model, input, ranked, device };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var dev = DeviceSelector.Resolve(DeviceSelector.Parse(r.GetValue(device)!));
            DeviceSelector.SetThreads(0);
            string folder = r.GetValue(model)!, file = r.GetValue(input)!;
            List<RmGroup> groups;
            if (r.GetValue(ranked)) groups = [.. DataFiles.ReadRanked(file).Records.Select(RmGroup.FromRanked)];
            else
            {
                var pairs = DataFiles.ReadPreferences(file).Records;
                using var chat = ChatText.TemplateFor(pairs, folder, file);   // conversations as the RM was trained on them
                groups = [.. pairs.Select(p => RmGroup.FromPair(ChatText.Rendered(p, chat, file)))];
            }
            var tokenizer = TextTokenizer.Load(folder);
            using var rm = LlamaForSequenceClassification.FromPretrained(folder, dev, ScalarType.Float32);
            var tokenized = groups.Select(g => RmTrainer.Tokenize(tokenizer, g, rm.Config.MaxPositionEmbeddings)).ToList();
            double acc = RmTrainer.Accuracy(RmTrainer.ScoreAll(rm, tokenized, tokenizer.PaddingId, dev), tokenized);
            Console.WriteLine($"pairwise_accuracy {acc:F4} over {groups.Sum(g => g.Pairs.Count)} comparisons in {groups.Count} prompts");
            return 0;
        }));
        return cmd;
    }
}
