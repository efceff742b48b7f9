using Rlhf.Inference.Rollout;

namespace Rlhf.Inference.Services;

/// <summary>
/// Cuts every generate call into fixed shards of <paramref name="shardSize"/> requests, run one after another on
/// <paramref name="inner"/>: the in-process twin of a replica pool, so a run with remote replicas and a run in process
/// batch their requests the same way.
/// </summary>
public sealed class ShardedRollouts(IRolloutService inner, int shardSize) : IRolloutService
{
    /// <summary>Requests per shard.</summary>
    public int ShardSize { get; } = shardSize >= 1 ? shardSize : throw new ArgumentException($"The shard size must be >= 1; got {shardSize}.");

    /// <inheritdoc/>
    public ulong WeightsVersion => inner.WeightsVersion;

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, long[]> WeightLayout => inner.WeightLayout;

    /// <inheritdoc/>
    public PolicyWeightFormat? WeightFormat => inner.WeightFormat;

    /// <inheritdoc/>
    public async Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
    {
        var results = new List<RolloutResult>(requests.Count);
        foreach (var shard in requests.Chunk(ShardSize)) results.AddRange(await inner.GenerateAsync(shard, call, cancellationToken));
        return results;
    }

    /// <inheritdoc/>
    public Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
        inner.PushWeightsAsync(weights, timeout, cancellationToken);

    /// <inheritdoc/>
    public void Dispose() => inner.Dispose();
}
