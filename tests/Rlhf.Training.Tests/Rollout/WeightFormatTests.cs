using Rlhf.Export;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Training.Common;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Tests.Export;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>The weight format a policy graph declares (its exporter's metadata), which the trainer's push follows.</summary>
public sealed class WeightFormatTests
{
    [Theory]
    [InlineData(GraphKind.Plain, RolloutPrecision.Fp32, false, false)]
    [InlineData(GraphKind.ContribGqa, RolloutPrecision.Fp32, true, false)]
    [InlineData(GraphKind.ContribGqa, RolloutPrecision.Int8, true, true)]
    public void EachExportDeclaresItsFormatAndAPushInThatFormatMatchesAFreshExport(GraphKind graph, RolloutPrecision precision, bool packed, bool int8)
    {
        using var a = ExportModels.Policy("llama", 3);
        using var b = ExportModels.Policy("llama", 4);
        string da = ExportModels.TempPath("format"), db = ExportModels.TempPath("format");
        try
        {
            var options = new ExportOptions { Overwrite = true, Precision = precision };
            ExportStage.ExportPolicy(a, da, graph, options, parity: false);
            ExportStage.ExportPolicy(b, db, graph, options, parity: false);
            using var engine = RolloutEngine.Load(da, new RolloutEngineOptions { Threads = 1 });
            using var fresh = RolloutEngine.Load(db, new RolloutEngineOptions { Threads = 1 });
            Assert.Equal(new PolicyWeightFormat(packed, int8), engine.WeightFormat);
            int[] ids = [1, 7, 3, 22, 41, 9];
            InferenceServices.Sync(engine, b, 1);
            float[] pushed = engine.Logits(ids), expected = fresh.Logits(ids);
            Assert.True(pushed.Zip(expected).Max(p => Math.Abs(p.First - p.Second)) <= 1e-5f, "the pushed weights differ from b's own export");
        }
        finally
        {
            foreach (string d in new[] { da, db }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }

    [Fact]
    public void AGraphThatDeclaresNoFormatTakesNoPushes()
    {
        Assert.Null(PolicyWeightFormat.FromMetadata(new Dictionary<string, string>()));
        Assert.Null(PolicyWeightFormat.FromMetadata(new Dictionary<string, string> { ["rlhf.graph"] = "reward" }));
        Assert.Equal(new PolicyWeightFormat(true, true), PolicyWeightFormat.FromMetadata(new Dictionary<string, string> { ["rlhf.graph"] = "decoder_gqa", ["rlhf.int8"] = "…" }));

        using var policy = ExportModels.Policy("llama", 3);
        var e = Assert.Throws<InvalidOperationException>(() => InferenceServices.Sync(new NoFormat(), policy, 1));
        Assert.Contains("declares no weight format", e.Message);
    }

    sealed class NoFormat : IRolloutService
    {
        public ulong WeightsVersion => 0;
        public IReadOnlyDictionary<string, long[]> WeightLayout => new Dictionary<string, long[]>();
        public PolicyWeightFormat? WeightFormat => null;
        public Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default) => throw new NotSupportedException();
        public Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default) => throw new NotSupportedException();
        public void Dispose() { }
    }
}
