using System.Diagnostics;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.Sft;
using static TorchSharp.torch;

namespace Rlhf.Training.RewardModel;

/// <summary>
/// <c>rlhf bench rm</c>: milliseconds per RM training step (forward, pairwise loss, backward, AdamW) when a batch of
/// K-response groups runs as one right-padded batch vs in length-sorted chunks of several sizes, on default-task
/// texts; with the padded share of the tokens each way.
/// </summary>
public static class RmBench
{
    /// <summary>One row of the report.</summary>
    public sealed record Row(string Layout, double MsPerStep, double SequencesPerSecond, double PaddedShare, double Speedup);

    /// <summary>
    /// Runs <paramref name="steps"/> timed steps (after 2 warm-up steps) per layout on <paramref name="promptsPerBatch"/>
    /// groups of <paramref name="k"/> sequences. <paramref name="modelFolder"/> null = a fresh tiny model
    /// (models/tiny/config.json) with a byte-level BPE tokenizer trained on the default task's texts.
    /// </summary>
    public static IReadOnlyList<Row> Run(string? modelFolder, int k, int promptsPerBatch, int steps, int[] chunks, int maxSeqLen = 96)
    {
        string? temp = null;
        try
        {
            if (modelFolder is null)
            {
                temp = Directory.CreateTempSubdirectory("rlhf-bench-rm-").FullName;
                modelFolder = FreshTinyFolder(temp);
            }
            var tokenizer = TextTokenizer.Load(modelFolder);
            int padId = tokenizer.PaddingId;
            using var model = LlamaForSequenceClassification.FromPretrained(modelFolder, CPU, ScalarType.Float32, newHeadSeed: 1);
            using var optimizer = Optimization.AdamW(model, new AdamWSettings(1e-5, 0, 0.9, 0.95, 1e-8));
            var examples = DataSets.SftExamples(7, DataSets.SftEvalName, (steps + 2) * promptsPerBatch * k);
            // K responses to one prompt, as the RM stage labels them (the first example's prompt, each example's response)
            var groups = examples.Chunk(k).Select(c => new RmTrainer.TokenizedGroup(
                new RmGroup(c[0].Prompt, [.. c.Select(e => e.Response)], [.. Pairs(c.Length)], new double[c.Length]),
                [.. c.Select(e => PromptFormat.JoinedIds(tokenizer, c[0].Prompt, e.Response, maxSeqLen))])).ToArray();
            var batches = groups.Chunk(promptsPerBatch).ToArray();

            var layouts = new List<(string Name, int Chunk)> { ("one padded batch", k * promptsPerBatch) };
            layouts.AddRange(chunks.Where(c => c < k * promptsPerBatch).Distinct().OrderDescending().Select(c => ($"chunks of {c}", c)));
            layouts.Add(("packed rows", 0));
            var rows = new List<Row>();
            double? baseline = null;
            foreach (var (name, chunk) in layouts)
            {
                var times = new List<double>();
                long real = 0, padded = 0;
                for (int b = 0; b < batches.Length; b++)
                {
                    var clock = Stopwatch.StartNew();
                    Optimization.ClearGrads(optimizer);
                    using (var scope = NewDisposeScope())
                    {
                        RmTrainer.BatchLoss(model, batches[b], padId, CPU, margin: 0, chunk).Loss.backward();
                    }
                    optimizer.step();
                    if (b < 2) continue;
                    times.Add(clock.Elapsed.TotalMilliseconds);
                    var lengths = batches[b].SelectMany(g => g.Sequences).Select(x => x.Length).Order().ToArray();
                    real += lengths.Sum();
                    if (chunk == 0) { var (r, w, _) = PackedBatch.Layout(lengths); padded += (long)r * w; }
                    else foreach (var c in lengths.Chunk(chunk)) padded += (long)c.Max() * c.Length;
                }
                double ms = times.Order().ElementAt(times.Count / 2);   // median: the machine may be shared
                baseline ??= ms;
                rows.Add(new Row(name, ms, k * promptsPerBatch * 1000.0 / ms, 1 - real / (double)padded, baseline.Value / ms));
            }
            return rows;
        }
        finally
        {
            if (temp is not null) Directory.Delete(temp, recursive: true);
        }
    }

    static IEnumerable<(int W, int L)> Pairs(int k)
    {
        for (int i = 0; i < k; i++)
            for (int j = i + 1; j < k; j++) yield return (i, j);
    }

    static string FreshTinyFolder(string dir)
    {
        var texts = DataSets.SftExamples(7, DataSets.SftTrainName, 2000).Select(e => PromptFormat.Join(e.Prompt, e.Response));
        SftTrainer.WriteFreshModel(dir, texts, vocabSize: 2000, "models/tiny/config.json", seed: 1);
        return dir;
    }
}
