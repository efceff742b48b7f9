using Rlhf.Export.Onnx;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Engines;

/// <summary>
/// The TorchSharp engine (<see cref="RolloutEngineKind.Torch"/>): <see cref="Generation.Generate"/> behind the rollout
/// interface, with the ONNX engine's sampler and log-prob definition. It samples from a model it owns, which weight
/// messages (unpacked initializer layout, <see cref="LlamaGraph.ExpectedShapes"/>) overwrite. Consecutive requests whose
/// sampling settings agree except for the seed are generated together in left-padded batches of at most
/// <c>batchRows</c>, each row drawing from its own request's seed.
/// </summary>
public sealed class TorchRollouts : IRolloutService
{
    readonly LlamaForCausalLM _policy;
    readonly TextTokenizer _tokenizer;
    readonly IReadOnlyList<int> _stopIds;
    readonly int _batchRows;
    readonly object _gate = new();
    PolicyWeights? _weights;
    ulong _version;

    /// <summary>Samples from <paramref name="policy"/> (owned from now on) in batches of at most <paramref name="batchRows"/>.</summary>
    public TorchRollouts(LlamaForCausalLM policy, TextTokenizer tokenizer, int batchRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchRows, 1);
        _policy = policy;
        _tokenizer = tokenizer;
        _stopIds = Generation.StopIds(policy.Config, tokenizer);
        _batchRows = batchRows;
        WeightLayout = LlamaGraph.ExpectedShapes(policy.Config);
    }

    /// <summary>
    /// An engine over its own float32 copy of <paramref name="actor"/>'s architecture on the actor's device, one request
    /// per batch; it holds random weights until the first push (<see cref="Common.InferenceServices.Sync"/>).
    /// </summary>
    public static TorchRollouts CopyOf(LlamaForCausalLM actor, TextTokenizer tokenizer)
    {
        var policy = LlamaForCausalLM.Create(actor.Config, actor.parameters().First().device, ScalarType.Float32, seed: 0);
        policy.eval();
        return new TorchRollouts(policy, tokenizer, batchRows: 1);
    }

    /// <inheritdoc/>
    public ulong WeightsVersion { get { lock (_gate) return _version; } }

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, long[]> WeightLayout { get; }

    /// <inheritdoc/>
    /// <remarks>The plain graph's layout (<see cref="LlamaGraph.ExpectedShapes"/>): transposed, q/k/v apart, float32.</remarks>
    public PolicyWeightFormat? WeightFormat { get; } = new(PackedQkv: false, Int8: false);

    /// <inheritdoc/>
    public Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
    {
        call ??= new RolloutCall();
        lock (_gate)
        {
            // TorchSharp's no-grad state is per thread: generate on the caller's thread.
            if (call.RequiredVersion is { } v && v != _version) throw new WeightsVersionMismatchException(v, _version);
            var results = new List<RolloutResult>(requests.Count);
            foreach (var batch in Batches(requests))
            {
                cancellationToken.ThrowIfCancellationRequested();
                results.AddRange(Generate(batch));
            }
            return Task.FromResult<IReadOnlyList<RolloutResult>>(results);
        }
    }

    /// <summary>Consecutive runs of at most <c>batchRows</c> requests whose sampling settings agree except for the seed.</summary>
    IEnumerable<IReadOnlyList<RolloutRequest>> Batches(IReadOnlyList<RolloutRequest> requests)
    {
        var batch = new List<RolloutRequest>();
        foreach (var r in requests)
        {
            if (batch.Count == _batchRows || (batch.Count > 0 && !SameSettings(batch[0], r)))
            {
                yield return batch;
                batch = [];
            }
            batch.Add(r);
        }
        if (batch.Count > 0) yield return batch;
    }

    static bool SameSettings(RolloutRequest a, RolloutRequest b) =>
        Settings(a) with { Seed = 0 } == Settings(b) with { Seed = 0 };

    static SamplingOptions Settings(RolloutRequest r) => r.Sampling ?? new SamplingOptions();

    /// <summary>One left-padded batch, each row drawing from its request's own seed.</summary>
    IEnumerable<RolloutResult> Generate(IReadOnlyList<RolloutRequest> batch)
    {
        var prompts = batch.Select(r => r.PromptIds?.ToArray() ?? PromptFormat.PromptIds(_tokenizer, r.PromptText ?? "")).ToList();
        var generated = Generation.Generate(_policy, [.. prompts.Select(p => p.Select(x => (long)x).ToArray())], Settings(batch[0]),
            _stopIds, _tokenizer.PaddingId, [.. batch.Select(r => Settings(r).Seed)]);
        var timings = new RolloutTimings(0, 0, batch.Count, generated.Sum(g => g.Tokens.Length));
        return generated.Select((g, i) =>
        {
            int[] ids = [.. g.Tokens.Select(t => (int)t)];
            return new RolloutResult(prompts[i], ids, PromptFormat.ResponseText(_tokenizer, ids), g.LogProbs,
                g.FinishReason, timings, _version);
        });
    }

    /// <inheritdoc/>
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
                state[m.Name].copy_(LlamaGraph.IsStoredTransposed(m.Name) ? t.t() : t);
            }
            _weights?.Dispose();
            _weights = weights;
            _version = weights.Version;
        }
        return Task.FromResult(sw.Elapsed);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _policy.Dispose();
        _weights?.Dispose();
    }
}
