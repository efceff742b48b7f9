using System.CommandLine;
using System.Globalization;
using System.Text;
using Rlhf.Export;
using Rlhf.Inference.Reward;
using Rlhf.Training.Common;
using Rlhf.Training.Data;

namespace Rlhf.Training.Cli;

/// <summary>
/// <c>rlhf score</c>: scores (prompt, response) rows (or prompt/chosen/rejected pairs) from a CSV/JSONL file with a
/// reward model on ONNX Runtime (our exported reward folder or an external sequence-classification ONNX) and writes a CSV.
/// </summary>
internal static class ScoreCommand
{
    public static Command Create()
    {
        var rm = new Option<string>("--reward-model") { Description = "Reward model: an ONNX folder (model.onnx, tokenizer files, optional reward_spec.json) or a .onnx file.", Required = true };
        var input = new Option<string>("--input") { Description = "CSV/JSONL with prompt,response columns (or prompt,chosen,rejected).", Required = true };
        var output = new Option<string>("--out") { Description = "CSV file to write.", DefaultValueFactory = _ => "scores.csv" };
        var batch = new Option<int>("--batch-size") { Description = "Rows per forward pass.", DefaultValueFactory = _ => 32 };
        var threads = new Option<int>("--threads") { Description = "ONNX Runtime intra-op threads (0 = all cores).", DefaultValueFactory = _ => 0 };
        var template = new Option<string?>("--template") { Description = "How prompt and response become the model's tokens: auto, joined ([BOS] prompt response [EOS]), pair ([CLS] prompt [SEP] response [SEP]) or text ([CLS] prompt response [SEP]); default: reward_spec.json's." };
        var cmd = new Command("score", "Score responses with an ONNX reward model (an empty prompt scores the response alone).") { rm, input, output, batch, threads, template };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var t = r.GetValue(template) is string name ? ParseTemplate(name) : (RewardTemplate?)null;
            string summary = Run(r.GetValue(rm)!, r.GetValue(input)!, r.GetValue(output)!, r.GetValue(batch), r.GetValue(threads), t);
            Console.WriteLine(summary);
            return 0;
        }));
        return cmd;
    }

    /// <summary>Scores the file and writes the CSV; returns a one-line summary.</summary>
    public static string Run(string rewardModel, string input, string output, int batchSize = 32, int threads = 0, RewardTemplate? template = null)
    {
        using var scorer = RewardScorer.Load(rewardModel, new RewardScorerOptions { BatchSize = batchSize, Threads = threads, Template = template });
        var sb = new StringBuilder();
        string summary;
        if (IsPreferenceFile(input))
        {
            var pairs = DataFiles.ReadPreferencesToScore(input).Records;
            var chosen = scorer.Score([.. pairs.Select(p => new RewardRequest(p.Prompt, p.Chosen))]);
            var rejected = scorer.Score([.. pairs.Select(p => new RewardRequest(p.Prompt, p.Rejected))]);
            sb.Append("prompt,chosen,rejected,score_chosen,score_rejected\n");
            for (int i = 0; i < pairs.Count; i++)
                sb.Append(Csv(pairs[i].Prompt)).Append(',').Append(Csv(pairs[i].Chosen)).Append(',').Append(Csv(pairs[i].Rejected)).Append(',')
                  .Append(F(chosen[i])).Append(',').Append(F(rejected[i])).Append('\n');
            double acc = pairs.Count == 0 ? 0 : Enumerable.Range(0, pairs.Count).Count(i => chosen[i] > rejected[i]) / (double)pairs.Count;
            summary = $"{pairs.Count} pairs scored; pairwise accuracy {acc:P1}; mean chosen {Mean(chosen):F4}, mean rejected {Mean(rejected):F4} -> {output}";
        }
        else
        {
            var rows = DataFiles.ReadResponses(input).Records;
            var scores = scorer.Score([.. rows.Select(p => new RewardRequest(p.Prompt, p.Response))]);
            sb.Append("prompt,response,score\n");
            for (int i = 0; i < rows.Count; i++)
                sb.Append(Csv(rows[i].Prompt)).Append(',').Append(Csv(rows[i].Response)).Append(',').Append(F(scores[i])).Append('\n');
            summary = $"{rows.Count} responses scored; mean {Mean(scores):F4} -> {output}";
        }
        string? dir = Path.GetDirectoryName(Path.GetFullPath(output));
        if (dir is not null) Directory.CreateDirectory(dir);
        AtomicFile.Write(output, tmp => File.WriteAllText(tmp, sb.ToString()));
        return summary;
    }

    /// <summary>auto, joined, pair or text (any case); anything else is an error listing them.</summary>
    public static RewardTemplate ParseTemplate(string name) =>
        Enum.TryParse<RewardTemplate>(name, ignoreCase: true, out var t) && Enum.IsDefined(t) && !int.TryParse(name, out _)
            ? t
            : throw new ArgumentException($"--template: unknown template '{name}'; use auto, joined, pair or text.");

    static bool IsPreferenceFile(string path)
    {
        using var reader = new StreamReader(path);
        string? first = reader.ReadLine();
        return first is not null && first.Contains("chosen", StringComparison.Ordinal) && first.Contains("rejected", StringComparison.Ordinal);
    }

    static string F(float x) => x.ToString("R", CultureInfo.InvariantCulture);
    static double Mean(float[] x) => x.Length == 0 ? 0 : x.Average();
    static string Csv(string s) => s.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? "\"" + s.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"" : s;
}
