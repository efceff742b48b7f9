using Rlhf.Training.Common;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Tests.Common;

public sealed class ConfigLoaderTests
{
    [Fact]
    public void FileThenOverridesWin()
    {
        string f = Path.GetTempFileName();
        File.WriteAllText(f, """{ "lr": 0.01, "epochs": 3, "decay": "linear" }""");
        var c = ConfigLoader.Load<SftConfig>(f, ["epochs=5", "out=runs/x", "eval_file=data/e.csv"]);
        Assert.Equal(0.01, c.Lr);
        Assert.Equal(5, c.Epochs);
        Assert.Equal(LrDecay.Linear, c.Decay);
        Assert.Equal("runs/x", c.Out);
        Assert.Equal("data/e.csv", c.EvalFile);
        Assert.Equal(new SftConfig().BatchSize, c.BatchSize);
    }

    [Fact]
    public void UnknownKeyNamesTheKeyAndListsKnownOnes()
    {
        var e = Assert.Throws<InvalidDataException>(() => ConfigLoader.Load<SftConfig>(null, ["learning_rate=1"]));
        Assert.Contains("'learning_rate'", e.Message);
        Assert.Contains("lr", e.Message);
    }

    [Fact]
    public void BadValuesAreReportedByValidate()
    {
        var c = ConfigLoader.Load<SftConfig>(null, ["batch_size=0"]);
        var e = Assert.Throws<InvalidDataException>(c.Validate);
        Assert.Contains("batch_size", e.Message);
    }

    [Fact]
    public void RoundTripsThroughJson()
    {
        var c = new SftConfig { Lr = 1e-3, Decay = LrDecay.Constant, InitFrom = "m" };
        string f = Path.GetTempFileName();
        File.WriteAllText(f, ConfigLoader.ToJson(c));
        Assert.Equal(ConfigLoader.ToJson(c), ConfigLoader.ToJson(ConfigLoader.Load<SftConfig>(f, [])));   // every key, list-valued ones included
    }
}

public sealed class NestedConfigTests
{
    [Fact]
    public void SectionsMergeKeyByKeyAndDottedOverridesReachIntoThem()
    {
        string f = Path.GetTempFileName();
        File.WriteAllText(f, """{ "out": "runs/p", "sft": { "lr": 0.01 }, "rm": { "k": 3 } }""");
        var c = ConfigLoader.Load<Rlhf.Training.Pipeline.PipelineConfig>(f, ["rm.lr=0.002", "sft.epochs=2"]);
        Assert.Equal("runs/p", c.Out);
        Assert.Equal(0.01, c.Sft.Lr);
        Assert.Equal(2, c.Sft.Epochs);
        Assert.Equal(new SftConfig().BatchSize, c.Sft.BatchSize);   // untouched keys keep their defaults
        Assert.Equal(3, c.Rm.K);
        Assert.Equal(0.002, c.Rm.Lr);
        var e = Assert.Throws<InvalidDataException>(() => ConfigLoader.Load<Rlhf.Training.Pipeline.PipelineConfig>(null, ["rm.kk=3"]));
        Assert.Contains("'rm.kk'", e.Message);
        Assert.Contains("Known keys of 'rm'", e.Message);
    }
}
