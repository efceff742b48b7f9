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
    public void PpoWithPtxLogsTheLossOnItsText()
    {
        string dir = Directory.CreateTempSubdirectory("rlhf-ptx-run-").FullName;
        string file = Path.Combine(dir, "ptx.txt");
        File.WriteAllLines(file, DataSets.Corpus(9, 200));
        var cfg = PpoTrainerTests.Tiny() with { Iterations = 2, PtxCoef = 0.5, PtxFile = file, PtxBatchSize = 4, PtxSeqLen = 16, BestOfN = [1], CheckpointEvery = 0 };
        PpoTrainer.Train(cfg, new RunControl { Progress = false });
        var m = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        // a next-token loss of a trained-on-reviews model on reviews: positive and below log V (uniform guessing)
        int vocab = Rlhf.Export.Hf.ModelConfig.Load(Path.Combine(cfg.SftModel, "config.json")).VocabSize;
        Assert.All(m.Rows, r => Assert.InRange(r["loss/ptx"], 0.01, Math.Log(vocab)));
    }
}
