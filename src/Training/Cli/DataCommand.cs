using System.CommandLine;
using Rlhf.Training.Data;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf data</c>: write the embedded default task's data sets to files.</summary>
internal static class DataCommand
{
    public static Command Create()
    {
        var outDir = new Option<string>("--out") { Description = "Folder to write into.", DefaultValueFactory = _ => "data/default" };
        var format = new Option<string>("--format") { Description = "csv or jsonl.", DefaultValueFactory = _ => "jsonl" };
        var seed = new Option<ulong>("--seed") { Description = "Generator seed.", DefaultValueFactory = _ => 1 };
        var sftTrain = new Option<int?>("--sft-train") { Description = "SFT training demonstrations." };
        var sftEval = new Option<int?>("--sft-eval") { Description = "Held-out SFT demonstrations." };
        var prompts = new Option<int?>("--prompts") { Description = "Prompts for each of the RM and PPO splits." };
        var cmd = new Command("data",
            "Write the default task (seeded synthetic reviews) as files: sft_train, sft_eval (prompt,response), " +
            "rm_prompts, rm_eval_prompts, ppo_prompts, ppo_eval_prompts (prompt) and corpus.txt.")
        {
            outDir, format, seed, sftTrain, sftEval, prompts,
        };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var fmt = r.GetValue(format)!.ToLowerInvariant() switch
            {
                "csv" => DataFormat.Csv,
                "jsonl" => DataFormat.Jsonl,
                var f => throw new ArgumentException($"--format {f}: use csv or jsonl."),
            };
            var sizes = new DefaultDataSizes();
            if (r.GetValue(sftTrain) is int a) sizes = sizes with { SftTrain = a };
            if (r.GetValue(sftEval) is int b) sizes = sizes with { SftEval = b };
            if (r.GetValue(prompts) is int p) sizes = sizes with { RmPrompts = p, PpoPrompts = p };
            var paths = DataSets.WriteDefault(r.GetValue(outDir)!, r.GetValue(seed), sizes, fmt);
            foreach (var path in new[] { paths.SftTrain, paths.SftEval, paths.RmPrompts, paths.RmEvalPrompts, paths.PpoPrompts, paths.PpoEvalPrompts, paths.Corpus })
                Console.WriteLine(path);
            return 0;
        }));
        return cmd;
    }
}
