using System.Text.Json;
using Rlhf.Export.Onnx;
using Rlhf.Training.Cli;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Tests.Ppo;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Training.Tests.Learning;

/// <summary>
/// An external reward model as users bring one: a BERT-style encoder classifier written with PyTorch's exporter
/// conventions (inputs input_ids, attention_mask, token_type_ids; output logits [B, 1]; WordPiece vocab.txt; no
/// reward_spec.json), on a small raw scale. <c>rlhf ppo --reward-model</c> alone optimises it: the critic starts from the
/// SFT model, the scores are normalised on SFT samples, and the held-out score rises.
/// </summary>
[Collection("Console")]
public sealed class ExternalRewardModelPpoTests
{
    const int H = 4, MaxPositions = 128;
    static readonly string[] Vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "the", "was", "and", "a", "food", "great", "good", "bad"];
    const float HeadWeight = 0.3f, HeadBias = 0.1f;

    /// <summary>
    /// word + position + token-type embeddings → masked mean pooling → classifier: logits = pooled · w + b. Word
    /// embeddings put 1 in dimension 0 for "." (0 elsewhere) and small noise in the others, so the score grows with the
    /// share of periods; w = (0.3, small noise): raw scores span a few hundredths.
    /// </summary>
    internal static string BertStyleRewardModel()
    {
        string dir = Directory.CreateTempSubdirectory("rlhf-bert-rm-").FullName;
        var rng = new Random(5);
        float Noise(double scale) => (float)((rng.NextDouble() * 2 - 1) * scale);
        float[] words = [.. Enumerable.Range(0, Vocab.Length * H).Select(i => i % H == 0 ? (Vocab[i / H] == "." ? 1f : 0f) : Noise(0.1))];
        float[] positions = [.. Enumerable.Range(0, MaxPositions * H).Select(i => i % H == 0 ? 0f : Noise(0.05))];
        float[] types = [.. Enumerable.Range(0, 2 * H).Select(i => i % H == 0 ? 0f : Noise(0.05))];
        float[] w = [HeadWeight, Noise(0.01), Noise(0.01), Noise(0.01)];

        var b = new GraphBuilder("bert_classifier");
        string ids = b.Input("input_ids", DataType.Int64, "batch", "sequence");
        string mask = b.Input("attention_mask", DataType.Int64, "batch", "sequence");
        string tt = b.Input("token_type_ids", DataType.Int64, "batch", "sequence");
        string x = b.Node("Gather", [b.Initializer("bert.embeddings.word_embeddings.weight", words, Vocab.Length, H), ids], Attr.Int("axis", 0));
        x = b.Node("Add", [x, b.Node("Gather", [b.Initializer("bert.embeddings.token_type_embeddings.weight", types, 2, H), tt], Attr.Int("axis", 0))]);
        string seqLen = b.Node("Shape", [ids], Attr.Int("start", 1), Attr.Int("end", 2));                          // [1] = S
        string pos = b.Node("Slice", [b.Initializer("bert.embeddings.position_embeddings.weight", positions, MaxPositions, H), b.ConstI64(0), seqLen, b.ConstI64(0)]);
        x = b.Node("Add", [x, pos]);                                                                                   // [B, S, H]
        string m = b.Node("Unsqueeze", [b.Node("Cast", [mask], Attr.Int("to", (long)DataType.Float)), b.ConstI64(2)]);
        string pooled = b.Node("Div", [b.Node("ReduceSum", [b.Node("Mul", [x, m]), b.ConstI64(1)], Attr.Int("keepdims", 0)),
                                       b.Node("ReduceSum", [m, b.ConstI64(1)], Attr.Int("keepdims", 0))]);
        b.AddNode("Add", [b.Node("MatMul", [pooled, b.Initializer("classifier.weight", w, H, 1)]), b.Initializer("classifier.bias", [HeadBias], 1)], ["logits"]);
        b.Output("logits", DataType.Float, "batch", 1);
        b.Save(dir);
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), Vocab);
        File.WriteAllText(Path.Combine(dir, "config.json"), $$"""{ "model_type": "bert", "max_position_embeddings": {{MaxPositions}}, "num_labels": 1 }""");
        return dir;
    }

    [Fact]
    public void ScoreTakesAnEmptyPromptAndATemplate()
    {
        string rm = BertStyleRewardModel();
        string input = Path.Combine(rm, "texts.csv"), output = Path.Combine(rm, "scores.csv");
        File.WriteAllText(input, "prompt,response\n,the food was great.\n,the food was great\n");
        foreach (string template in new[] { "pair", "text" })
        {
            Assert.Equal(0, RlhfCommand.Run(["score", "--reward-model", rm, "--input", input, "--out", output, "--template", template, "--threads", "1"]));
            double[] s = [.. File.ReadAllLines(output).Skip(1).Select(l => double.Parse(l[(l.LastIndexOf(',') + 1)..], System.Globalization.CultureInfo.InvariantCulture))];
            // [CLS] the food was great . [SEP] vs [CLS] the food was great [SEP]: one period in 7 tokens raises the score
            // by 0.3/7 minus the change of the other (noise) terms; the period's own share dominates
            Assert.True(s[0] - s[1] > 0.02, $"{template}: {s[0]} vs {s[1]}");
        }
        Assert.Equal(1, RlhfCommand.Run(["score", "--reward-model", rm, "--input", input, "--out", output, "--template", "bogus"]));
    }

    [Fact]
    public void PpoWithOnlyAnExternalRewardModelRaisesItsHeldOutScore()
    {
        string rm = BertStyleRewardModel();
        var baseCfg = PpoTrainerTests.Tiny() with
        {
            RmModel = null, MissingEosPenalty = null, Iterations = 14, RolloutBatch = 32, MiniBatch = 8, PpoEpochs = 4,
            ActorLr = 3e-3, CriticLr = 3e-3, AdaptiveKl = false, InitKlCoef = 0.02, EvalPrompts = 32, EvalEvery = 100,
            CheckpointEvery = 0, BestOfN = [1], NormalizationSamples = 64,
        };
        string dir = Directory.CreateTempSubdirectory("rlhf-bert-ppo-").FullName;
        string cfgFile = Path.Combine(dir, "ppo.json"), outDir = Path.Combine(dir, "ppo");
        File.WriteAllText(cfgFile, ConfigLoader.ToJson(baseCfg with { Out = outDir }));
        Assert.Equal(0, RlhfCommand.Run(["ppo", "--config", cfgFile, "--reward-model", rm]));

        var summary = JsonSerializer.Deserialize<PpoSummary>(File.ReadAllText(Path.Combine(outDir, "summary.json")), ConfigLoader.Json)!;
        var norm = JsonSerializer.Deserialize<RewardNormalization>(File.ReadAllText(Path.Combine(outDir, RewardNormalization.FileName)), ConfigLoader.Json)!;
        Assert.Equal(norm, summary.RewardNormalization);
        Assert.Equal(1 / norm.RawStd, norm.Gain, 9);                  // mean 0, std 1 on SFT samples
        Assert.Equal(-norm.RawMean / norm.RawStd, norm.Bias, 9);
        Assert.True(norm.RawStd < 0.1, $"raw std {norm.RawStd}: the RM's own scale is small");

        // The raw mean and std measured independently: 256 fresh SFT samples on the run's training prompts (other seeds),
        // scored by `rlhf score`. The run measured 64; the two agree within sampling error (standard errors ≈ 0.14 std
        // for the mean, ≈ 10% for the std).
        var prompts = Rlhf.Training.Data.DataSets.Prompts((ulong)baseCfg.Seed, Rlhf.Training.Data.DataSets.PpoPromptsName, baseCfg.DefaultPrompts).Select(p => p.Prompt).ToList();
        var texts = Enumerable.Range(0, 4).SelectMany(_ => prompts).ToList();
        var samples = GenerateCommand.Run(baseCfg.SftModel, Rlhf.Inference.Rollout.RolloutEngineKind.Ort, texts,
            new Rlhf.Inference.Rollout.SamplingOptions { MaxNewTokens = baseCfg.MaxNewTokens, Temperature = 1, Seed = 1000 }, threads: 1);
        string input = Path.Combine(dir, "sft_samples.jsonl"), scored = Path.Combine(dir, "sft_scores.csv");
        File.WriteAllLines(input, texts.Select((t, i) => JsonSerializer.Serialize(new { prompt = t, response = samples[i].Response })));
        ScoreCommand.Run(rm, input, scored, threads: 1);
        var raw = new List<double>();
        using (var csv = CsvHelper.CsvReader.FromFile(scored))
            while (csv.Read()) raw.Add(double.Parse(csv.GetString(2), System.Globalization.CultureInfo.InvariantCulture));   // prompt,response,score
        var (mean, std) = Statistics.MeanStd(raw);
        string measured = $"run: raw mean {norm.RawMean:F5} std {norm.RawStd:F5}; independent {raw.Count} samples: mean {mean:F5} std {std:F5}";
        Assert.Equal(texts.Count, raw.Count);
        Assert.True(Math.Abs(mean - norm.RawMean) < 0.5 * std, measured);
        Assert.InRange(norm.RawStd / std, 0.7, 1.4);
        string trace = $"held-out normalised score SFT {summary.SftScore:F3} -> PPO {summary.PpoScore:F3} (KL {summary.PpoKl:F3}); raw std {norm.RawStd:F4}";
        // measured: 0.108 -> 1.883 at KL 4.2 (with reward_normalization none the raw score moves 0.1083 -> 0.1109, +0.19 std, at KL 0.6)
        Assert.True(summary.PpoScore > summary.SftScore + 0.5, trace);
        Assert.True(double.IsFinite(summary.PpoKl) && summary.PpoKl < 20, trace);
        Assert.True(File.Exists(Path.Combine(outDir, "critic", "model.safetensors")));
    }
}
