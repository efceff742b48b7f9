using System.CommandLine;
using Rlhf.Training.Common;
using Rlhf.Training.Pipeline;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf sft</c>: supervised fine-tuning.</summary>
internal static class SftCommand
{
    public static Command Create()
    {
        var common = new StageOptions();
        var initFrom = new Option<string?>("--init-from") { Description = "HF model folder to fine-tune (default: a fresh tiny model from models/tiny with a tokenizer trained on the data)." };
        var trainFile = new Option<string?>("--train-file") { Description = "Demonstrations, CSV or JSONL with prompt,response (default: the embedded review task)." };
        var evalFile = new Option<string?>("--eval-file") { Description = "Held-out demonstrations, same format." };
        var skip = new Option<bool>("--skip-malformed") { Description = "Skip and count malformed rows instead of failing." };
        var epochs = new Option<int?>("--epochs") { Description = "Passes over the training data." };
        var maxSteps = new Option<int?>("--max-steps") { Description = "Cap on optimizer steps (0 = epochs decide)." };
        var lr = new Option<double?>("--lr") { Description = "Peak learning rate." };
        var batch = new Option<int?>("--batch-size") { Description = "Sequences per micro-batch." };
        var cmd = new Command("sft", "Supervised fine-tuning on demonstrations (response-only cross-entropy). Writes an HF model folder, metrics.csv, loss.png, samples.csv and summary.json.");
        common.AddTo(cmd);
        foreach (Option o in new Option[] { initFrom, trainFile, evalFile, skip, epochs, maxSteps, lr, batch }) cmd.Options.Add(o);
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var overrides = common.Overrides(r);
            if (r.GetValue(initFrom) is string i) overrides.Add($"init_from={StageOptions.Quote(i)}");
            if (r.GetValue(trainFile) is string tf) overrides.Add($"train_file={StageOptions.Quote(tf)}");
            if (r.GetValue(evalFile) is string ef) overrides.Add($"eval_file={StageOptions.Quote(ef)}");
            if (r.GetValue(skip)) overrides.Add("skip_malformed=true");
            if (r.GetValue(epochs) is int e) overrides.Add($"epochs={e}");
            if (r.GetValue(maxSteps) is int m) overrides.Add($"max_steps={m}");
            if (r.GetValue(lr) is double l) overrides.Add($"lr={l.ToString("R", System.Globalization.CultureInfo.InvariantCulture)}");
            if (r.GetValue(batch) is int b) overrides.Add($"batch_size={b}");
            var cfg = ConfigLoader.Load<SftConfig>(r.GetValue(common.Config), overrides);
            return RlhfCommand.RunStage(Stages.Of(cfg), r.GetValue(common.Resume), r.GetValue(common.Overwrite));
        }));
        return cmd;
    }
}
