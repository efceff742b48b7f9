using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;

namespace Rlhf.Inference.Services;

/// <summary>
/// Generation as a trainer reaches it: plain request/result messages and weight updates as named buffers, so an
/// in-process engine and a remote inference service are interchangeable.
/// </summary>
public interface IRolloutService : IDisposable
{
    /// <summary>One result per request, in order.</summary>
    IReadOnlyList<RolloutResult> Generate(IReadOnlyList<RolloutRequest> requests);

    /// <summary>
    /// Replaces the policy weights (initializer name → buffer). <paramref name="owner"/> keeps the buffers' memory alive
    /// and is disposed by the service when the next update replaces them. Returns the time taken.
    /// </summary>
    TimeSpan UpdateWeights(IReadOnlyDictionary<string, WeightBuffer> weights, IDisposable? owner = null);
}

/// <summary>Reward scoring as a trainer reaches it.</summary>
public interface IRewardService : IDisposable
{
    /// <summary>Normalised reward per (prompt, response), in order.</summary>
    float[] Score(IReadOnlyList<RewardRequest> requests);
}
