using Rlhf.Export.Onnx;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Cli;
using Rlhf.Training.Data;
using Rlhf.Training.Data.Tokenizer;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Rollout;

/// <summary><c>rlhf generate --engine ort|torch</c> and <c>rlhf score</c> on a tiny model with a trained BPE tokenizer.</summary>
public sealed class OrtCommandTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"rlhf-ortcmd-{Guid.NewGuid():N}");
    static readonly string[] Corpus = [.. Enumerable.Range(0, 60).Select(i => $"the product {i % 7} was great and the service was slow, review number {i}.")];

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    (string Folder, ByteLevelBpe Bpe) TokenizerFolder(string name)
    {
        string folder = Path.Combine(_dir, name);
        var bpe = BpeTrainer.Train(Corpus, new BpeTrainerOptions { VocabSize = 300 });
        bpe.Save(folder);
        return (folder, bpe);
    }

    [Fact]
    public void GreedyOutputsOfBothEnginesAreIdentical()
    {
        var (folder, bpe) = TokenizerFolder("policy");
        var cfg = TinyModels.Config() with { VocabSize = bpe.VocabSize };
        using (var m = TinyModels.Randomized(cfg, 9)) m.SavePretrained(folder);
        string[] prompts = ["the product", "review number 3 was", "slow"];
        var settings = new Inference.Rollout.SamplingOptions { MaxNewTokens = 10, Temperature = 0, Seed = 1 };
        var torchOut = GenerateCommand.Run(folder, Inference.Rollout.RolloutEngineKind.Torch, prompts, settings, threads: 2);
        var ortOut = GenerateCommand.Run(folder, Inference.Rollout.RolloutEngineKind.Ort, prompts, settings, threads: 2);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(torchOut[i].Ids, ortOut[i].Ids);
            Assert.Equal(torchOut[i].Response, ortOut[i].Response);
            Assert.Equal(torchOut[i].Eos, ortOut[i].Eos);
        }
        Assert.Equal(0, RlhfCommand.Run(["generate", "--model", folder, "--engine", "ort", "--prompt", "the product", "--max-new-tokens", "4", "--threads", "1"]));
    }

    [Fact]
    public void StopStringCutsTheTextAndEndsTheRow()
    {
        var (folder, bpe) = TokenizerFolder("stop");
        var cfg = TinyModels.Config() with { VocabSize = bpe.VocabSize };
        using var m = TinyModels.Randomized(cfg, 9);
        string onnx = Path.Combine(_dir, "stop-onnx");
        LlamaGraph.Export(cfg, m.state_dict(), onnx);
        var tok = TextTokenizer.Load(folder);
        using var engine = Inference.Rollout.RolloutEngine.Load(onnx, new Inference.Rollout.RolloutEngineOptions { Threads = 1, EosTokenIds = [] }, tok);
        var greedy = new Inference.Rollout.SamplingOptions { Temperature = 0, MaxNewTokens = 12 };
        var free = engine.Generate(Inference.Rollout.RolloutRequest.FromText("the product", greedy));
        Assert.Equal(Inference.Rollout.RolloutFinishReason.Length, free.FinishReason);
        Assert.Equal(12, free.ResponseIds.Length);
        // A visible two-character stop string taken from the text after response token 4 (never blank, so the test
        // always runs); the expected cut is computed from the free run: the first k tokens whose text contains it.
        string full = tok.Decode(free.ResponseIds);
        int from = tok.Decode(free.ResponseIds[..4]).Length;
        int visible = Enumerable.Range(from, full.Length - from - 1).First(i => !char.IsWhiteSpace(full[i]) && !char.IsWhiteSpace(full[i + 1]));
        string stop = full.Substring(visible, 2);
        int k = Enumerable.Range(1, 12).First(n => tok.Decode(free.ResponseIds[..n]).Contains(stop, StringComparison.Ordinal));
        int at = full.IndexOf(stop, StringComparison.Ordinal);

        var cut = engine.Generate(Inference.Rollout.RolloutRequest.FromText("the product", greedy with { StopStrings = [stop] }));
        Assert.Equal(Inference.Rollout.RolloutFinishReason.StopString, cut.FinishReason);
        Assert.Equal(full[..at].TrimStart(), cut.Text);
        Assert.DoesNotContain(stop, cut.Text, StringComparison.Ordinal);
        Assert.Equal(free.ResponseIds[..k], cut.ResponseIds);      // ends with the token that completed the stop string
        Assert.Equal(cut.ResponseIds.Length, cut.LogProbs.Length);
    }

    [Fact]
    public void ExportedRewardModelScoresEqualTorchSharp()
    {
        var (folder, bpe) = TokenizerFolder("rm");
        var cfg = TinyModels.Config() with { VocabSize = bpe.VocabSize };
        using var rm = LlamaForSequenceClassification.Create(cfg, CPU, ScalarType.Float32, 5);
        TinyModels.Scramble(rm, 5);
        rm.eval();
        RewardGraph.Export(cfg, rm.state_dict(), folder);

        (string P, string R)[] pairs = [("the product", "was great."), ("review number 12 was", "slow and the service was great"), ("slow", "!")];
        using var scorer = RewardScorer.Load(folder, new RewardScorerOptions { Threads = 2, BatchSize = 2 });
        Assert.Equal(RewardTemplate.Joined, scorer.Template);
        var scores = scorer.Score([.. pairs.Select(p => new RewardRequest(p.P, p.R))]);

        var tok = TextTokenizer.Load(folder);
        for (int i = 0; i < pairs.Length; i++)
        {
            int[] ids = [.. PromptFormat.PromptIds(tok, pairs[i].P), .. PromptFormat.ResponseIds(tok, pairs[i].P, pairs[i].R)];
            Assert.Equal(ids, scorer.Encode(pairs[i].P, pairs[i].R).Ids);
            using var noGrad = torch.no_grad();
            using var x = torch.tensor(ids.Select(v => (long)v).ToArray(), [1, ids.Length]);
            using var mask = torch.ones([1, ids.Length], ScalarType.Int64);
            float expected = rm.Scores(x, mask).item<float>();
            Assert.True(Math.Abs(expected - scores[i]) <= 1e-4f, $"row {i}: ort {scores[i]} vs torch {expected}");
        }

        // rlhf score over a CSV of (prompt, response) and a JSONL of preference pairs.
        string csv = Path.Combine(_dir, "rows.csv"), prefs = Path.Combine(_dir, "prefs.jsonl"), outCsv = Path.Combine(_dir, "out", "scores.csv");
        DataFiles.WriteSft(csv, pairs.Select(p => new SftExample(p.P, p.R)));
        Assert.Equal(0, RlhfCommand.Run(["score", "--reward-model", folder, "--input", csv, "--out", outCsv, "--threads", "1"]));
        var lines = File.ReadAllLines(outCsv);
        Assert.Equal("prompt,response,score", lines[0]);
        Assert.Equal(pairs.Length + 1, lines.Length);
        Assert.Equal(scores[0], float.Parse(lines[1].Split(',')[^1], System.Globalization.CultureInfo.InvariantCulture), 5);
        DataFiles.WritePreferences(prefs, [new PreferencePair("the product", "was great.", "slow")]);
        Assert.Equal(0, RlhfCommand.Run(["score", "--reward-model", Path.Combine(folder, "model.onnx"), "--input", prefs, "--out", outCsv]));
        Assert.StartsWith("prompt,chosen,rejected,score_chosen,score_rejected", File.ReadAllText(outCsv));
    }
}
