using Rlhf.Export;
using Rlhf.Export.Onnx;
using Rlhf.Training.OnnxExport;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Common;

/// <summary>Where rollouts are generated.</summary>
public enum RolloutBackend
{
    /// <summary>ONNX Runtime over the exported actor, weights synced in memory after every update (the default).</summary>
    Ort,
    /// <summary>TorchSharp eager generation with the KV cache (reference path, no export).</summary>
    Torch,
    /// <summary>
    /// ONNX Runtime GenAI over the actor exported once with its weights as graph inputs; after every update the
    /// generators read the trainer's weight copy in place (no file, no new session). Chunks of at most 32 rows.
    /// </summary>
    Genai,
}

/// <summary>Opens the rollout and reward services the stages talk to (in-process here; the same interfaces serve a remote service).</summary>
public static class InferenceServices
{
    /// <summary>
    /// The rollout service for <paramref name="actor"/>: ONNX Runtime (our engine) or ONNX Runtime GenAI over the default
    /// rollout graph (GroupQueryAttention where the head size allows, see <see cref="ExportStage.DefaultGraph"/>) exported
    /// once to <paramref name="scratch"/>, weights then flowing in memory via <see cref="Sync"/>; or TorchSharp generation.
    /// </summary>
    public static IRolloutService Rollouts(RolloutBackend backend, LlamaForCausalLM actor, TextTokenizer tokenizer, string tokenizerFolder, string scratch, int threads,
        RolloutPrecision precision = RolloutPrecision.Fp32)
    {
        if (precision != RolloutPrecision.Fp32 && backend != RolloutBackend.Ort)
            throw new ArgumentException($"rollout precision {ExportNames.Name(precision)} is available with the ort engine only.");
        var graph = ExportStage.DefaultGraph(actor.Config);
        switch (backend)
        {
            case RolloutBackend.Ort:
                ExportStage.ExportPolicy(actor, scratch, graph,
                    new ExportOptions { TokenizerFolder = tokenizerFolder, Overwrite = true, Stage = "ppo-rollout", Precision = precision }, parity: false);
                return new OnnxRollouts(RolloutEngine.Load(scratch, new RolloutEngineOptions { Threads = threads, MaxBatchSize = 64 }, tokenizer), scratch);
            case RolloutBackend.Genai:
                ExportStage.ExportPolicy(actor, scratch, graph, new ExportOptions
                {
                    TokenizerFolder = tokenizerFolder, Overwrite = true, Stage = "ppo-rollout", Weights = WeightPlacement.Inputs,
                }, parity: false);
                var rollouts = new OnnxRollouts(GenAiRolloutEngine.Load(scratch, new GenAiEngineOptions { Threads = threads }, tokenizer), scratch);
                Sync(rollouts, actor, 0);   // the graph holds no weights: feed the actor's before the first rollout
                return rollouts;
            case RolloutBackend.Torch:
                var torchRollouts = new TorchRollouts(actor, tokenizer);
                Sync(torchRollouts, actor, 0);
                return torchRollouts;
            default:
                throw new ArgumentOutOfRangeException(nameof(backend));
        }
    }

    /// <summary>
    /// Sends <paramref name="policy"/>'s current weights to the rollout service as weights <paramref name="version"/>:
    /// a snapshot in the layout the service's graph reads (q/k/v packed where its layout names <c>qkv_proj</c>, projections
    /// as int8 + scales where it is an int8 graph, float32 otherwise),
    /// handed over as a <see cref="PolicyWeights"/> message (in process: pointers into the snapshot, no further copy).
    /// </summary>
    public static TimeSpan Sync(IRolloutService rollouts, LlamaForCausalLM policy, ulong version)
    {
        bool int8 = rollouts.WeightLayout.Keys.Any(k => k.EndsWith(Int8MatMul.QuantizedName(""), StringComparison.Ordinal));
        bool packed = int8 || rollouts.WeightLayout.Keys.Any(k => k.EndsWith(".qkv_proj.weight", StringComparison.Ordinal));
        var snapshot = OrtWeights.From(policy, packedQkv: packed, int8: int8);
        PolicyWeights message;
        try { message = PolicyWeights.FromBuffers(version, snapshot.Buffers, snapshot); }
        catch
        {
            snapshot.Dispose();
            throw;
        }
        return rollouts.PushWeights(message);
    }

    /// <summary>An ONNX engine (ours or GenAI's) whose scratch export is deleted on dispose.</summary>
    sealed class OnnxRollouts(IRolloutService engine, string scratch) : IRolloutService
    {
        public ulong WeightsVersion => engine.WeightsVersion;
        public IReadOnlyDictionary<string, long[]> WeightLayout => engine.WeightLayout;
        public Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default) =>
            engine.GenerateAsync(requests, call, cancellationToken);
        public Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
            engine.PushWeightsAsync(weights, timeout, cancellationToken);

        public void Dispose()
        {
            engine.Dispose();
            if (Directory.Exists(scratch)) Directory.Delete(scratch, recursive: true);
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

    /// <summary>
    /// TorchSharp eager generation behind the rollout interface (reference backend; logprobs are not recorded). It samples
    /// from its own copy of the model, which weight messages (unpacked initializer layout) overwrite.
    /// </summary>
    sealed class TorchRollouts : IRolloutService
    {
        readonly LlamaForCausalLM _policy;
        readonly TextTokenizer _tokenizer;
        readonly object _gate = new();
        PolicyWeights? _weights;
        ulong _version;

        public TorchRollouts(LlamaForCausalLM actor, TextTokenizer tokenizer)
        {
            var device = actor.parameters().First().device;
            _policy = LlamaForCausalLM.Create(actor.Config, device, ScalarType.Float32, seed: 0);
            _policy.eval();
            _tokenizer = tokenizer;
            WeightLayout = Rlhf.Export.Onnx.LlamaGraph.ExpectedShapes(actor.Config);
        }

        public ulong WeightsVersion { get { lock (_gate) return _version; } }

        public IReadOnlyDictionary<string, long[]> WeightLayout { get; }

        public Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
        {
            call ??= new RolloutCall();
            lock (_gate)
            {
                // TorchSharp's no-grad state is per thread: generate on the caller's thread.
                if (call.RequiredVersion is { } v && v != _version) throw new WeightsVersionMismatchException(v, _version);
                return Task.FromResult(Generate(requests, cancellationToken));
            }
        }

        IReadOnlyList<RolloutResult> Generate(IReadOnlyList<RolloutRequest> requests, CancellationToken cancellationToken)
        {
            var results = new List<RolloutResult>();
            foreach (var r in requests)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var s = r.Sampling ?? new SamplingOptions();
                int[] prompt = [.. r.PromptIds ?? PromptFormat.PromptIds(_tokenizer, r.PromptText ?? "")];
                var g = Generation.Generate(_policy, [prompt.Select(x => (long)x).ToArray()], new GenerationOptions
                {
                    MaxNewTokens = s.MaxNewTokens, Temperature = s.Temperature, TopK = s.TopK, TopP = s.TopP, Seed = (long)s.Seed,
                    EosTokenIds = Generation.StopIds(_policy.Config, _tokenizer), PadTokenId = _tokenizer.PadId ?? 0,
                })[0];
                int[] ids = [.. g.Tokens.Select(t => (int)t)];
                results.Add(new RolloutResult(prompt, ids, PromptFormat.ResponseText(_tokenizer, ids),
                    [.. Enumerable.Repeat(float.NaN, ids.Length)],
                    g.FinishReason == FinishReason.Stop ? RolloutFinishReason.Eos : RolloutFinishReason.Length,
                    new RolloutTimings(0, 0, 1, ids.Length), _version));
            }
            return results;
        }

        public Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            lock (_gate)
            {
                using var noGrad = no_grad();
                var state = _policy.state_dict();
                foreach (var m in weights.Manifest)
                {
                    if (!WeightLayout.TryGetValue(m.Name, out var shape) || !shape.SequenceEqual(m.Shape))
                        throw new ArgumentException($"Weight '{m.Name}' [{string.Join(", ", m.Shape)}] is not a tensor of the TorchSharp rollout model's layout.");
                    using var t = empty(m.Shape, ScalarType.Float32);
                    weights.Bytes(m.Name).CopyTo(t.bytes);
                    var target = state[m.Name];
                    target.copy_(Rlhf.Export.Onnx.LlamaGraph.IsStoredTransposed(m.Name) ? t.t() : t);
                }
                _weights?.Dispose();
                _weights = weights;
                _version = weights.Version;
            }
            return Task.FromResult(sw.Elapsed);
        }

        public void Dispose()
        {
            _policy.Dispose();
            _weights?.Dispose();
        }
    }
}
