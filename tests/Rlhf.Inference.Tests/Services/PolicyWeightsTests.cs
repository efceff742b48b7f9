using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;

namespace Rlhf.Inference.Tests.Services;

/// <summary>The weight message: manifest in name order, SHA-256 over the bytes, and the receiver's checks.</summary>
public sealed class PolicyWeightsTests
{
    static Dictionary<string, WeightBuffer> Buffers() => new()
    {
        ["b.weight"] = new WeightBuffer("b.weight", [2, 3], [1, 2, 3, 4, 5, 6]),
        ["a.weight"] = new WeightBuffer("a.weight", [2], [-1f, 0.5f]),
    };

    [Fact]
    public void TheManifestListsTensorsByNameWithTheirBytesAndTheHashCoversThem()
    {
        using var w = PolicyWeights.FromBuffers(7, Buffers());
        Assert.Equal(7UL, w.Version);
        Assert.Equal(["a.weight", "b.weight"], w.Manifest.Select(m => m.Name));
        Assert.Equal([8L, 24L], w.Manifest.Select(m => m.ByteLength));
        Assert.Equal(32, w.TotalBytes);
        byte[] all = [.. w.Bytes("a.weight").ToArray(), .. w.Bytes("b.weight").ToArray()];
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(all)), w.Sha256);
    }

    [Fact]
    public void TheReceiverAcceptsTheSameBytesAndRefusesOthers()
    {
        using var sent = PolicyWeights.FromBuffers(3, Buffers());
        float[][] data = [[-1f, 0.5f], [1, 2, 3, 4, 5, 6]];
        using var received = PolicyWeights.FromArrays(3, sent.Manifest, data, sent.Sha256);
        Assert.Equal(sent.Sha256, received.Sha256);
        data[1][5] = 7;
        var e = Assert.Throws<InvalidDataException>(() => PolicyWeights.FromArrays(3, sent.Manifest, data, sent.Sha256));
        Assert.Contains("SHA-256", e.Message);
        var badManifest = sent.Manifest.Select(m => m with { ByteLength = m.ByteLength + 4 }).ToList();
        Assert.Throws<ArgumentException>(() => PolicyWeights.FromArrays(3, badManifest, data, sent.Sha256));
        var badType = sent.Manifest.Select(m => m with { DType = "float16" }).ToList();
        Assert.Contains("float32", Assert.Throws<ArgumentException>(() => PolicyWeights.FromArrays(3, badType, data, sent.Sha256)).Message);
    }

    [Fact]
    public void DisposingTheMessageReleasesItsOwnerOnce()
    {
        var owner = new CountingOwner();
        var w = PolicyWeights.FromBuffers(1, Buffers(), owner);
        w.Dispose();
        w.Dispose();
        Assert.Equal(1, owner.Disposed);
    }

    [Fact]
    public async Task AShardedServiceCutsCallsIntoFixedShardsInOrder()
    {
        var inner = new RecordingService();
        using var sharded = new ShardedRollouts(inner, 2);
        var requests = Enumerable.Range(0, 5).Select(i => RolloutRequest.FromIds([i + 1])).ToList();
        var results = await sharded.GenerateAsync(requests, new RolloutCall { RequiredVersion = 4 });
        Assert.Equal([2, 2, 1], inner.Calls.Select(c => c.Count));
        Assert.Equal([1, 2, 3, 4, 5], results.Select(r => r.PromptIds[0]));
        Assert.All(inner.Required, v => Assert.Equal(4UL, v));
        Assert.Throws<ArgumentException>(() => new ShardedRollouts(inner, 0));
    }

    sealed class CountingOwner : IDisposable
    {
        public int Disposed;
        public void Dispose() => Disposed++;
    }

    sealed class RecordingService : IRolloutService
    {
        public List<IReadOnlyList<RolloutRequest>> Calls { get; } = [];
        public List<ulong?> Required { get; } = [];
        public ulong WeightsVersion => 4;
        public IReadOnlyDictionary<string, long[]> WeightLayout { get; } = new Dictionary<string, long[]>();
        public PolicyWeightFormat? WeightFormat => null;
        public Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
        {
            Calls.Add(requests);
            Required.Add(call?.RequiredVersion);
            return Task.FromResult<IReadOnlyList<RolloutResult>>([.. requests.Select(r => new RolloutResult([.. r.PromptIds!], [], null, [], RolloutFinishReason.Length,
                new RolloutTimings(0, 0, 1, 0), 4))]);
        }
        public Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default) => Task.FromResult(TimeSpan.Zero);
        public void Dispose() { }
    }
}
