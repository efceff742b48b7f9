using System.CommandLine;
using Rlhf.Export;
using Rlhf.Training.Ppo;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf compare</c>: finished PPO-stage and DPO runs on one gold-vs-KL frontier, with a table.</summary>
internal static class CompareCommand
{
    public static Command Create()
    {
        var runs = new Option<string>("--runs") { Description = "Comma-separated name=folder pairs: ppo-stage folders (any advantage estimator) or dpo folders, e.g. ppo=runs/a/ppo,grpo=runs/b/ppo,dpo=runs/c/dpo.", Required = true };
        var plot = new Option<string>("--plot") { Description = "Where the frontier plot goes (PNG).", DefaultValueFactory = _ => "compare.png" };
        var markdown = new Option<string?>("--markdown") { Description = "Also write the table to this Markdown file." };
        var cmd = new Command("compare", "Held-out gold against KL to the SFT model for several finished runs (their paths over evaluations, DPO's final point, SFT best-of-N), and a table of gold gain, KL and seconds per iteration by phase.")
            { runs, plot, markdown };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var list = r.GetValue(runs)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(item =>
            {
                int eq = item.IndexOf('=');
                return eq <= 0 ? throw new ArgumentException($"--runs takes name=folder pairs; got '{item}'.") : (item[..eq], item[(eq + 1)..]);
            }).ToList();
            string table = MethodComparison.Write(list, r.GetValue(plot)!);
            if (r.GetValue(markdown) is string md) AtomicFile.WriteAllText(md, table);
            Console.Out.Write(table);
            return 0;
        }));
        return cmd;
    }
}
