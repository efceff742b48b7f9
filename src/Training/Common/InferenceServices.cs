using Rlhf.Export;
using Rlhf.Training.OnnxExport;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
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
    public static IRolloutService Rollouts(RolloutBackend backend, LlamaForCausalLM actor, TextTokenizer tokenizer, string tokenizerFolder, string scratch, int threads)
    {
        var graph = ExportStage.DefaultGraph(actor.Config);
        bool packed = graph == GraphKind.ContribGqa;
        switch (backend)
        {
            case RolloutBackend.Ort:
                ExportStage.ExportPolicy(actor, scratch, graph,
                    new ExportOptions { TokenizerFolder = tokenizerFolder, Overwrite = true, Stage = "ppo-rollout" }, parity: false);
                return new OnnxRollouts(RolloutEngine.Load(scratch, new RolloutEngineOptions { Threads = threads, MaxBatchSize = 64 }, tokenizer), packed, scratch);
            case RolloutBackend.Genai:
                ExportStage.ExportPolicy(actor, scratch, graph, new ExportOptions
                {
                    TokenizerFolder = tokenizerFolder, Overwrite = true, Stage = "ppo-rollout", Weights = WeightPlacement.Inputs,
                }, parity: false);
                var rollouts = new OnnxRollouts(GenAiRolloutEngine.Load(scratch, new GenAiEngineOptions { Threads = threads }, tokenizer), packed, scratch);
                Sync(rollouts, actor);   // the graph holds no weights: feed the actor's before the first rollout
                return rollouts;
            case RolloutBackend.Torch:
                return new TorchRollouts(actor, tokenizer);
            default:
                throw new ArgumentOutOfRangeException(nameof(backend));
        }
    }

    /// <summary>Sends <paramref name="policy"/>'s current weights to the rollout service (the TorchSharp backend just samples from it).</summary>
    public static TimeSpan Sync(IRolloutService rollouts, LlamaForCausalLM policy)
    {
        switch (rollouts)
        {
            case TorchRollouts t:
                t.Policy = policy;
                return TimeSpan.Zero;
            case OnnxRollouts o:
                var weights = OrtWeights.From(policy, packedQkv: o.PackedQkv);
                return o.UpdateWeights(weights.Buffers, weights);
            default:
                throw new ArgumentException($"Unknown rollout service {rollouts.GetType().Name}.");
        }
    }

    /// <summary>
    /// An ONNX engine (ours or GenAI's) with the weight layout its graph reads (packed q/k/v for GroupQueryAttention);
    /// its scratch export is deleted on dispose.
    /// </summary>
    sealed class OnnxRollouts(IRolloutService engine, bool packedQkv, string scratch) : IRolloutService
    {
        public bool PackedQkv => packedQkv;
        public IReadOnlyList<RolloutResult> Generate(IReadOnlyList<RolloutRequest> requests) => engine.Generate(requests);
        public TimeSpan UpdateWeights(IReadOnlyDictionary<string, WeightBuffer> weights, IDisposable? owner = null) => engine.UpdateWeights(weights, owner);

        public void Dispose()
        {
            engine.Dispose();
            if (Directory.Exists(scratch)) Directory.Delete(scratch, recursive: true);
        }
    }

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

    /// <summary>TorchSharp eager generation behind the rollout interface (reference backend; logprobs are not recorded).</summary>
    sealed class TorchRollouts(LlamaForCausalLM actor, TextTokenizer tokenizer) : IRolloutService
    {
        public LlamaForCausalLM Policy { get; set; } = actor;

        public IReadOnlyList<RolloutResult> Generate(IReadOnlyList<RolloutRequest> requests)
        {
            var results = new List<RolloutResult>();
            foreach (var r in requests)
            {
                var s = r.Sampling ?? new SamplingOptions();
                int[] prompt = [.. r.PromptIds ?? PromptFormat.PromptIds(tokenizer, r.PromptText ?? "")];
                var g = Generation.Generate(Policy, [prompt.Select(x => (long)x).ToArray()], new GenerationOptions
                {
                    MaxNewTokens = s.MaxNewTokens, Temperature = s.Temperature, TopK = s.TopK, TopP = s.TopP, Seed = (long)s.Seed,
                    EosTokenIds = tokenizer.EosId is int e ? [e] : [], PadTokenId = tokenizer.PadId ?? 0,
                })[0];
                int[] ids = [.. g.Tokens.Select(t => (int)t)];
                results.Add(new RolloutResult(prompt, ids, PromptFormat.ResponseText(tokenizer, ids),
                    [.. Enumerable.Repeat(float.NaN, ids.Length)],
                    g.FinishReason == FinishReason.Stop ? RolloutFinishReason.Eos : RolloutFinishReason.Length,
                    new RolloutTimings(0, 0, 1, ids.Length)));
            }
            return results;
        }

        public TimeSpan UpdateWeights(IReadOnlyDictionary<string, WeightBuffer> weights, IDisposable? owner = null)
        {
            owner?.Dispose();
            return TimeSpan.Zero;
        }

        public void Dispose() { }
    }
}
