using Rlhf.Inference.Rollout;
using Xunit.Abstractions;

namespace Rlhf.Inference.Tests.Rollout;

/// <summary>A fact that runs only when RLHF_BENCH=1.</summary>
public sealed class BenchFactAttribute : FactAttribute
{
    public BenchFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("RLHF_BENCH") != "1") Skip = "Benchmark: set RLHF_BENCH=1 to run.";
    }
}

public sealed class SamplerBenchTests(ITestOutputHelper output)
{
    [BenchFact]
    [Trait("Category", "Bench")]
    public void Sampler_ns_per_sample()
    {
        foreach (int v in new[] { 2048, 32000 })
        {
            var r = SamplerBench.Run(v, v > 10_000 ? 5_000 : 20_000);
            output.WriteLine(r.ToString());
            Console.WriteLine(r);
        }
    }
}
