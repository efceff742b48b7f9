using Rlhf.Training.OnnxExport;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Model;

namespace Rlhf.Training.Common;

/// <summary>
/// The weight sync into a rollout service, and the reward and remote services the stages talk to (the same interfaces
/// serve in-process and remote services; in-process rollout engines open through <see cref="Engines.PolicyRollouts"/>).
/// </summary>
public static class InferenceServices
{
    /// <summary>
    /// Sends <paramref name="policy"/>'s current weights to the rollout service as weights <paramref name="version"/>:
    /// a snapshot in the layout the service's graph reads (q/k/v packed where its layout names <c>qkv_proj</c>, projections
    /// as int8 + scales where it is an int8 graph, float32 otherwise),
    /// handed over as a <see cref="PolicyWeights"/> message (in process: pointers into the snapshot, no further copy).
    /// A LoRA policy whose service graph takes adapters (<see cref="PolicyWeightFormat.Lora"/>, the base exported once by
    /// <see cref="Engines.PolicyRollouts.ForActor"/>) sends its adapter alone (<see cref="LoraAdapterExport.Tensors"/>).
    /// </summary>
    public static TimeSpan Sync(IRolloutService rollouts, LlamaForCausalLM policy, ulong version) =>
        rollouts.PushWeights(Snapshot(rollouts, policy, version));

    /// <summary>The message <see cref="Sync"/> sends, in the format the service's graph declares (the caller owns it until it hands it to a push).</summary>
    public static PolicyWeights Snapshot(IRolloutService rollouts, LlamaForCausalLM policy, ulong version)
    {
        var format = rollouts.WeightFormat ?? throw new InvalidOperationException(
            "The rollout engine's graph declares no weight format (no rlhf.graph metadata): weights can be pushed only into a policy graph that `rlhf export` wrote.");
        if (format.Lora && policy.Lora is { } lora)   // the graph holds the base: the adapter alone, naming its base
            return PolicyWeights.FromBuffers(version, LoraAdapterExport.Buffers(LoraAdapterExport.Tensors(lora)), baseFingerprint: LoraAdapterExport.BaseFingerprint(policy));
        var snapshot = OrtWeights.From(policy, packedQkv: format.PackedQkv, int8: format.Int8);
        try { return PolicyWeights.FromBuffers(version, snapshot.Buffers, snapshot); }
        catch
        {
            snapshot.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Rollout replicas behind one service (<see cref="ReplicaPool"/>): shards of <paramref name="shardSize"/> requests
    /// (0 = one shard per call), every call with a deadline of <paramref name="timeout"/>.
    /// </summary>
    public static IRolloutService Replicas(IReadOnlyList<string> endpoints, string? tokenFile, int shardSize, TimeSpan timeout) =>
        new ReplicaPool(endpoints, Token(tokenFile), shardSize > 0 ? shardSize : int.MaxValue, timeout);

    /// <summary>A reward replica (<c>rlhf serve reward</c>) as the reward service: one Score call per batch, bounded retries.</summary>
    public static IRewardService RemoteRewards(string endpoint, string? tokenFile, TimeSpan timeout) =>
        new RemoteRewards(endpoint, Token(tokenFile), timeout);

    /// <summary>An external reward server with OpenRLHF's remote-RM contract (<c>POST</c> {"query", "prompts"} -> {"rewards"}).</summary>
    public static IRewardService OpenRlhfRewards(string url, string? tokenFile, TimeSpan timeout) =>
        new OpenRlhfRewards(url, Token(tokenFile), timeout);

    /// <summary>In-process rollouts cut into the same fixed shards a replica pool would send (0 = unchanged).</summary>
    public static IRolloutService Sharded(IRolloutService rollouts, int shardSize) =>
        shardSize > 0 ? new ShardedRollouts(rollouts, shardSize) : rollouts;

    static string? Token(string? tokenFile) => tokenFile is null ? null : File.ReadAllText(tokenFile).Trim();

    /// <summary>The reward service: an ONNX reward model (external or ours), or our RM folder's <c>onnx/</c> export.</summary>
    public static IRewardService Rewards(string? onnxRewardModel, string? rmFolder, int threads, RewardTemplate? template = null)
    {
        string path = onnxRewardModel ?? Path.Combine(rmFolder ?? throw new ArgumentException("No reward model given."), ExportStage.OnnxFolderName);
        if (onnxRewardModel is null && !Directory.Exists(path))
            throw new DirectoryNotFoundException($"{rmFolder} has no {ExportStage.OnnxFolderName}/ reward export; rerun `rlhf rm` or pass --reward-model.");
        return RewardScorer.Load(path, new RewardScorerOptions { Threads = threads, Template = template });
    }

    /// <summary>K sampled responses per prompt through a rollout service (seeded per prompt and sample).</summary>
    public static IReadOnlyList<(string Text, bool EndedWithEos)[]> Sample(IRolloutService rollouts, TextTokenizer tokenizer,
        IReadOnlyList<string> prompts, int k, SamplingOptions sampling)
    {
        var requests = prompts.SelectMany((p, i) => Enumerable.Range(0, k).Select(j =>
            RolloutRequest.FromIds(PromptFormat.PromptIds(tokenizer, p), sampling with { Seed = Rng.Mix(sampling.Seed ^ Rng.Mix((ulong)(i * k + j))) })))
            .ToList();
        var results = rollouts.Generate(requests);
        return [.. prompts.Select((_, i) => Enumerable.Range(0, k)
            .Select(j => (PromptFormat.ResponseText(tokenizer, results[i * k + j].ResponseIds), results[i * k + j].FinishReason == RolloutFinishReason.Eos))
            .ToArray())];
    }
}
