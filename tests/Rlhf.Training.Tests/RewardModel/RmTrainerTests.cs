using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using Rlhf.Training.Tests.Sft;
using static TorchSharp.torch;
using Rlhf.Training.Tests.Common;

namespace Rlhf.Training.Tests.RewardModel;

/// <summary>Short real RM runs on a tiny SFT model.</summary>
public sealed class RmTrainerTests
{
    static readonly Lazy<string> SftFolder = new(() =>
    {
        var cfg = SftTrainerTests.Tiny(Path.Combine(Directory.CreateTempSubdirectory().FullName, "sft"));
        SftTrainer.Run(cfg, new RunControl { Progress = false });
        return cfg.Out;
    });

    static RmConfig Tiny() => new()
    {
        Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "rm"), SftModel = SftFolder.Value, TrainPrompts = 12,
        EvalPrompts = 4, K = 3, PromptsPerBatch = 4, Epochs = 1, MaxNewTokens = 8, MaxSeqLen = 40, EvalEvery = 1, CheckpointEvery = 1,
        Threads = 1, Lr = 1e-3, Seed = 5,
    };

    [Fact]
    public void Int8LabellingSamplesFromTheInt8GraphWithTheSameSeeds()
    {
        string sft = Ppo.PpoTrainerTests.GqaSft.Value;   // int8 graphs are GroupQueryAttention graphs (head_dim 16)
        var tok = Rlhf.Inference.Tokenization.TextTokenizer.Load(sft);
        RmData Label(Rlhf.Export.RolloutPrecision p)
        {
            var cfg = Tiny() with { SftModel = sft, MaxNewTokens = 16, RolloutPrecision = p };
            Directory.CreateDirectory(cfg.Out);
            return RmTrainer.LabelFresh(cfg, tok, CPU);
        }
        string[] fp32 = [.. Label(Rlhf.Export.RolloutPrecision.Fp32).Train.SelectMany(g => g.Responses)];
        string[] int8 = [.. Label(Rlhf.Export.RolloutPrecision.Int8).Train.SelectMany(g => g.Responses)];
        Assert.Equal(12 * 3, int8.Length);
        int same = fp32.Zip(int8).Count(p => p.First == p.Second);
        Assert.True(same < fp32.Length, "int8 weights move the logits, so with the same seeds some samples differ");
        Assert.True(same >= fp32.Length / 3, $"{same} of {fp32.Length} samples equal: the int8 graph should sample nearly the same policy");   // measured: 20 of 36
    }

    [Fact]
    public void DefaultTaskRunLabelsTrainsNormalisesAndWritesEverything()
    {
        var cfg = Tiny() with { EvalPrompts = 8, MaxNewTokens = 16 };   // enough held-out samples for gold scores that differ
        var s = RmTrainer.Run(cfg, new RunControl { Progress = false });
        Assert.Equal(3, s.Steps);                                 // 12 prompts / 4 per batch
        Assert.Equal(12 * 3, s.TrainPairs);                       // C(3,2) = 3 per prompt
        Assert.NotNull(s.GoldSpearman);
        foreach (string f in new[] { "config.json", "model.safetensors", "tokenizer.json", "rankings.jsonl", "eval_rankings.jsonl", "metrics.csv", "loss.png", "rewards.png", "summary.json", RewardNormalization.FileName })
            Assert.True(File.Exists(Path.Combine(cfg.Out, f)), f);
        Assert.Equal(12, DataFiles.ReadRanked(Path.Combine(cfg.Out, "rankings.jsonl")).Records.Count);

        // the saved RM reproduces the normalisation: eval responses score mean 0, std 1 after gain/bias
        using var rm = LlamaForSequenceClassification.FromPretrained(cfg.Out, CPU, ScalarType.Float32);
        var tok = Rlhf.Inference.Tokenization.TextTokenizer.Load(cfg.Out);
        var groups = DataFiles.ReadRanked(Path.Combine(cfg.Out, "eval_rankings.jsonl")).Records
            .Select(r => RmTrainer.Tokenize(tok, RmGroup.FromRanked(r), cfg.MaxSeqLen)).ToList();
        var z = RmTrainer.ScoreAll(rm, groups, tok.PadId ?? 0, CPU).SelectMany(x => x).Select(s.Normalization.Apply).ToArray();
        Assert.Equal(0, z.Average(), 4);
        Assert.Equal(1, Math.Sqrt(z.Sum(v => v * v) / (z.Length - 1)), 4);

        // the reported accuracy is the saved RM's: every pair of a held-out group whose gold scores differ, counted right
        // when the RM orders it as gold does (computed here from the saved model and eval_gold.json)
        var gold = System.Text.Json.JsonSerializer.Deserialize<double[][]>(File.ReadAllText(Path.Combine(cfg.Out, "eval_gold.json")))!;
        int right = 0, counted = 0, offset = 0;
        foreach (var g in gold)
        {
            for (int i = 0; i < g.Length; i++)
                for (int j = i + 1; j < g.Length; j++)
                {
                    if (g[i] == g[j]) continue;
                    counted++;
                    if ((z[offset + i] > z[offset + j]) == (g[i] > g[j])) right++;
                }
            offset += g.Length;
        }
        Assert.Equal(z.Length, offset);
        Assert.True(counted > 0, "every held-out gold score tied: the test's data cannot check the accuracy: " + string.Join(" | ", gold.Select(g => string.Join(",", g))));
        Assert.Equal(right / (double)counted, s.PairwiseAccuracy, 12);

        // the ONNX export in onnx/ scores the same pairs identically, normalisation included (ONNX Runtime vs TorchSharp)
        using var scorer = Rlhf.Inference.Reward.RewardScorer.Load(Path.Combine(cfg.Out, "onnx"));
        var requests = DataFiles.ReadRanked(Path.Combine(cfg.Out, "eval_rankings.jsonl")).Records
            .SelectMany(r => r.Responses.Select(x => new Rlhf.Inference.Reward.RewardRequest(r.Prompt, x))).ToList();
        float[] ort = scorer.Score(requests);
        for (int i = 0; i < z.Length; i++) Assert.True(Math.Abs(z[i] - ort[i]) < 1e-4, $"row {i}: {requests[i]} torch {z[i]} ort {ort[i]} ids {string.Join(",", scorer.Encode(requests[i].Prompt, requests[i].Response).Ids)} torch ids {string.Join(",", groups.SelectMany(g => g.Sequences).ElementAt(i))}");
    }

    [Theory]
    [InlineData(RmTrainer.ScoreChunk)]   // packed rows, what the trainer uses
    [InlineData(16)]                     // two length-sorted chunks
    public void PackedAndChunkedScoringMatchScoringEachSequenceAlone(int chunk)
    {
        // 3 groups × 7 responses of different lengths = 21 sequences, scored in the layout, then put back in order
        var tok = Rlhf.Inference.Tokenization.TextTokenizer.Load(SftFolder.Value);
        using var rm = LlamaForSequenceClassification.FromPretrained(SftFolder.Value, CPU, ScalarType.Float32, newHeadSeed: 3);
        string[] words = ["good", "the staff were rude", "a long and very slow evening with cold soup", "", "fine.", "we loved it, really", "the room"];
        var groups = Enumerable.Range(0, 3).Select(g => RmTrainer.Tokenize(tok,
            new RmGroup($"Prompt {g}: the food", words.Select((w, i) => string.Join(' ', Enumerable.Repeat(w, 1 + (i + g) % 3))).ToArray(), [], new double[words.Length]), 40)).ToList();
        using var noGrad = no_grad();
        var chunked = RmTrainer.ScoreGroups(rm, groups, tok.PadId ?? 0, CPU, chunk).data<float>().ToArray();
        var alone = groups.SelectMany(g => g.Sequences).Select(seq =>
        {
            using var ids = tensor(seq.Select(x => (long)x).ToArray(), [1, seq.Length]);
            using var mask = ones_like(ids);
            return rm.Scores(ids, mask).item<float>();
        }).ToArray();
        Assert.Equal(21, chunked.Length);
        for (int i = 0; i < alone.Length; i++) Assert.True(Math.Abs(chunked[i] - alone[i]) < 1e-4, $"sequence {i}: chunked {chunked[i]} alone {alone[i]}");
    }

    [Fact]
    public void BenchComparesOnePaddedBatchWithChunksThatPadLess()
    {
        var rows = RmBench.Run(SftFolder.Value, k: 4, promptsPerBatch: 2, steps: 2, chunks: [4, 2, 99]);
        Assert.Equal(["one padded batch", "chunks of 4", "chunks of 2", "packed rows"], rows.Select(r => r.Layout));   // 99 ≥ 8 sequences: not a chunking
        Assert.Equal(1.0, rows[0].Speedup);
        Assert.All(rows, r => Assert.True(r.MsPerStep > 0 && r.PaddedShare is >= 0 and < 1));
        Assert.True(rows[1].PaddedShare <= rows[0].PaddedShare && rows[2].PaddedShare <= rows[1].PaddedShare);   // sorted chunks pad less
    }

    [Fact]
    public void ResumeAfterAKillMatchesAnUninterruptedRun()
    {
        var a = Tiny();
        RmTrainer.Run(a, new RunControl { Progress = false });
        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "rm") };
        StopAfter.Step(2, c => RmTrainer.Run(b, c));
        RmTrainer.Run(b, new RunControl { Progress = false, Resume = true });
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
    }

    [Fact]
    public void LoraRunTrainsAdapterAndHeadAndResumesExactly()
    {
        var a = Tiny() with { LoraRank = 4, GradientCheckpointing = true };
        RmTrainer.Run(a, new RunControl { Progress = false });
        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "rm") };
        StopAfter.Step(2, c => RmTrainer.Run(b, c));
        RmTrainer.Run(b, new RunControl { Progress = false, Resume = true });
        foreach (var f in new[] { "model.safetensors", "adapter/adapter_model.safetensors" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, f)), File.ReadAllBytes(Path.Combine(b.Out, f)));
        var header = Rlhf.Export.Hf.SafeTensors.ReadHeader(Path.Combine(a.Out, "adapter", "adapter_model.safetensors"));
        Assert.Contains(header.Tensors, t => t.Name == "base_model.model.score.weight");
    }

    [Fact]
    public void TrainsFromAPairsFile()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        string pairs = Path.Combine(dir, "pairs.csv");
        DataFiles.WritePreferences(pairs, Enumerable.Range(0, 8).Select(i =>
            new PreferencePair($"The food {i} was", "great and the staff were friendly.", "awful and the staff were rude.")));
        var cfg = Tiny() with { PairsFile = pairs, EvalFile = null };
        var s = RmTrainer.Run(cfg, new RunControl { Progress = false });
        Assert.Equal(2, s.Steps);
        Assert.Equal(8, s.TrainPairs);
        Assert.Null(s.GoldSpearman);
        // normalised on what PPO will sample (the SFT model answering the file's prompts, at most eval_prompts = 4 of them), not on the file's own responses
        Assert.Equal($"4 SFT samples on training prompts of {pairs}", s.Normalization.Source);
        Assert.True(s.Normalization.RawStd > 0);
        var written = System.Text.Json.JsonSerializer.Deserialize<RewardNormalization>(
            File.ReadAllText(Path.Combine(cfg.Out, RewardNormalization.FileName)), Rlhf.Training.Common.ConfigLoader.Json)!;
        Assert.Equal(s.Normalization, written);
    }
}
