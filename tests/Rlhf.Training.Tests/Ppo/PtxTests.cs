using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.Ppo;
using Rlhf.Training.Tests.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>PPO-ptx on pretraining text: packing, the loss over every token against a plain per-token loop, the files it reads, a run that logs it.</summary>
public sealed class PtxTests
{
    [Fact]
    public void RowsOverlapByOneSoEveryTokenAfterTheFirstIsPredictedOnce()
    {
        int[] stream = [.. Enumerable.Range(0, 11)];
        int[][] rows = PtxBatches.Rows(stream, 4);
        Assert.Equal(new[] { new[] { 0, 1, 2, 3 }, [3, 4, 5, 6], [6, 7, 8, 9] }, rows);   // token 10 would need a partial row
        int[] predicted = [.. rows.SelectMany(r => r.Skip(1))];
        Assert.Equal(Enumerable.Range(1, 9), predicted);
    }

    [Fact]
    public void NllEqualsAPlainLoopOverEveryTokenWithItsPrefixAlone()
    {
        using var actor = TinyModels.Randomized(TinyModels.Config(), 21);
        long[][] rows = [[1, 7, 3, 9, 4, 4], [2, 0, 49, 5, 11, 30]];
        using var ids = TinyModels.Ids(rows);
        double nll;
        using (no_grad()) nll = PtxBatches.Nll(actor, ids).item<float>();

        // −log softmax(logits of the prefix x_<t, run on its own)[x_t], averaged over the 2·5 predicted tokens
        double sum = 0;
        int n = 0;
        using (no_grad())
            foreach (long[] row in rows)
                for (int t = 1; t < row.Length; t++)
                {
                    using var prefix = TinyModels.Ids(row[..t]);
                    using var mask = ones_like(prefix);
                    using var pos = arange(t, dtype: ScalarType.Int64).unsqueeze(0);
                    using var logits = actor.Forward(prefix, mask, pos);
                    float[] last = logits[0, t - 1].data<float>().ToArray();
                    double max = last.Max(), lse = max + Math.Log(last.Sum(z => Math.Exp(z - max)));
                    sum += lse - last[row[t]];
                    n++;
                }
        Assert.Equal(10, n);
        Assert.Equal(sum / n, nll, 4);
    }

    [Fact]
    public void PerplexityIsExpOfTheMeanNllOverEveryPredictedTokenWhateverTheBatching()
    {
        using var actor = TinyModels.Randomized(TinyModels.Config(), 22);
        int[][] rows = [[1, 7, 3, 9, 4], [2, 0, 49, 5, 11], [3, 3, 8, 1, 0]];
        double nll;
        using (no_grad())
        using (var ids = TinyModels.Ids([.. rows.Select(r => r.Select(x => (long)x).ToArray())]))
            nll = PtxBatches.Nll(actor, ids).item<float>();
        // batches of 2 and 1 rows: each batch's mean weighted by its 8 and 4 predicted tokens
        Assert.Equal(Math.Exp(nll), PtxBatches.Perplexity(actor, rows, CPU, batchSize: 2), 3);
        Assert.Equal(Math.Exp(nll), PtxBatches.Perplexity(actor, rows, CPU, batchSize: 16), 3);
    }

    [Fact]
    public void PtxTextComesFromPlainTextOrATextColumn()
    {
        string dir = Directory.CreateTempSubdirectory("rlhf-ptx-").FullName;
        File.WriteAllText(Path.Combine(dir, "a.txt"), "The soup was great.\n\nThe room was small.\n");
        File.WriteAllText(Path.Combine(dir, "a.csv"), "id,text\n1,The soup was great.\n2,\"The room, small.\"\n");
        File.WriteAllText(Path.Combine(dir, "a.jsonl"), "{\"text\": \"The soup was great.\"}\n{\"text\": 3}\n");
        Assert.Equal(["The soup was great.", "The room was small."], DataFiles.ReadTexts(Path.Combine(dir, "a.txt")).Records.Select(r => r.Text));
        Assert.Equal(["The soup was great.", "The room, small."], DataFiles.ReadTexts(Path.Combine(dir, "a.csv")).Records.Select(r => r.Text));
        var e = Assert.Throws<DataFileException>(() => DataFiles.ReadTexts(Path.Combine(dir, "a.jsonl")));
        Assert.Equal(2, e.Line);
    }

    [Fact]
    public void PtxEntersTheActorUpdateAndLowersTheLossOnItsText()
    {
        string dir = Directory.CreateTempSubdirectory("rlhf-ptx-run-").FullName;
        string file = Path.Combine(dir, "ptx.txt");
        File.WriteAllLines(file, DataSets.Corpus(9, 200));
        var with = PpoTrainerTests.Tiny() with { Iterations = 2, PtxCoef = 0.5, PtxFile = file, PtxBatchSize = 4, PtxSeqLen = 16, BestOfN = [1], CheckpointEvery = 0 };
        var without = with with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo"), PtxCoef = 0 };
        PpoTrainer.Train(with, new RunControl { Progress = false });
        PpoTrainer.Train(without, new RunControl { Progress = false });
        var m = MetricsTable.ReadCsv(Path.Combine(with.Out, "metrics.csv"));
        var m0 = MetricsTable.ReadCsv(Path.Combine(without.Out, "metrics.csv"));
        // a next-token loss of a trained-on-reviews model on reviews: positive and below log V (uniform guessing)
        int vocab = Rlhf.Export.Hf.ModelConfig.Load(Path.Combine(with.SftModel, "config.json")).VocabSize;
        Assert.All(m.Rows, r => Assert.InRange(r["loss/ptx"], 0.01, Math.Log(vocab)));
        Assert.DoesNotContain("loss/ptx", m0.Columns);

        // the same rollouts in iteration 1 (the same policy sampled them) ...
        Assert.Equal(m0.Rows[0]["objective/scores"], m.Rows[0]["objective/scores"]);
        Assert.Equal(m0.Rows[0]["objective/kl"], m.Rows[0]["objective/kl"]);
        // ... but another actor update (the critic's, which the ptx term does not enter, is the same)
        Assert.NotEqual(m0.Rows[0]["grad_norm/actor"], m.Rows[0]["grad_norm/actor"]);
        Assert.Equal(m0.Rows[0]["grad_norm/critic"], m.Rows[0]["grad_norm/critic"], 9);   // the ptx term has no value part
        // and one that pulls the actor towards the ptx text: lower perplexity on it than the update without the term
        var tokenizer = Rlhf.Inference.Tokenization.TextTokenizer.Load(with.Out);
        int[][] rows = PtxBatches.Rows(PtxBatches.Pack(tokenizer, DataSets.Corpus(9, 200)), 16);
        using var a = LlamaForCausalLM.FromPretrained(with.Out, CPU, ScalarType.Float32);
        using var b = LlamaForCausalLM.FromPretrained(without.Out, CPU, ScalarType.Float32);
        double pWith = PtxBatches.Perplexity(a, rows, CPU), pWithout = PtxBatches.Perplexity(b, rows, CPU);
        Assert.True(pWith < pWithout, $"ptx text perplexity {pWith} with the ptx term, {pWithout} without");
    }
}
