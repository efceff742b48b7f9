using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;

namespace Rlhf.Training.Engines;

/// <summary>An ONNX engine (ours or GenAI's) over a scratch export that is deleted when the engine is disposed.</summary>
sealed class ScratchRollouts(IRolloutService engine, string scratch) : IRolloutService
{
    /// <inheritdoc/>
    public ulong WeightsVersion => engine.WeightsVersion;

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, long[]> WeightLayout => engine.WeightLayout;

    /// <inheritdoc/>
    public PolicyWeightFormat? WeightFormat => engine.WeightFormat;

    /// <inheritdoc/>
    public Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default) =>
        engine.GenerateAsync(requests, call, cancellationToken);

    /// <inheritdoc/>
    public Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
        engine.PushWeightsAsync(weights, timeout, cancellationToken);

    /// <inheritdoc/>
    public void Dispose()
    {
        engine.Dispose();
        if (Directory.Exists(scratch)) Directory.Delete(scratch, recursive: true);
    }
}
