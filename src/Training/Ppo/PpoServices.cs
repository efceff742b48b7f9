using Rlhf.Export;
using Rlhf.Training.OnnxExport;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>Opens the rollout and reward services PPO talks to (in-process here; the same interfaces serve a remote service).</summary>
public static class PpoServices
{
    /// <summary>
    /// The rollout service for <paramref name="actor"/>: ONNX Runtime over the default rollout graph (GroupQueryAttention
    /// where the head size allows, see <see cref="ExportStage.DefaultGraph"/>) exported once to <paramref name="scratch"/>,
    /// weights then flowing in memory via <see cref="Sync"/>; or TorchSharp generation.
    /// </summary>
    public static IRolloutService Rollouts(RolloutBackend backend, LlamaForCausalLM actor, TextTokenizer tokenizer, string tokenizerFolder, string scratch, int threads)
    {
        switch (backend)
        {
            case RolloutBackend.Ort:
                var graph = ExportStage.DefaultGraph(actor.Config);
                ExportStage.ExportPolicy(actor, scratch, graph,
                    new ExportOptions { TokenizerFolder = tokenizerFolder, Overwrite = true, Stage = "ppo-rollout" }, parity: false);
                var engine = RolloutEngine.Load(scratch, new RolloutEngineOptions { Threads = threads, MaxBatchSize = 64 }, tokenizer);
                return new OrtRollouts(engine, graph == GraphKind.ContribGqa);
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
            case OrtRollouts o:
                var weights = OrtWeights.From(policy, packedQkv: o.PackedQkv);
                return o.UpdateWeights(weights.Buffers, weights);
            default:
                throw new ArgumentException($"Unknown rollout service {rollouts.GetType().Name}.");
        }
    }

    /// <summary>The ONNX Runtime engine with the weight layout its graph reads (packed q/k/v for GroupQueryAttention).</summary>
    sealed class OrtRollouts(RolloutEngine engine, bool packedQkv) : IRolloutService
    {
        public bool PackedQkv => packedQkv;
        public IReadOnlyList<RolloutResult> Generate(IReadOnlyList<RolloutRequest> requests) => engine.Generate(requests);
        public TimeSpan UpdateWeights(IReadOnlyDictionary<string, WeightBuffer> weights, IDisposable? owner = null) => engine.UpdateWeights(weights, owner);
        public void Dispose() => engine.Dispose();
    }

    /// <summary>The reward service: an external/ours ONNX reward model, or our RM folder's <c>onnx/</c> export.</summary>
    public static IRewardService Rewards(PpoConfig cfg)
    {
        string path = cfg.RewardModel ?? Path.Combine(cfg.RmModel!, "onnx");
        if (cfg.RewardModel is null && !Directory.Exists(path))
            throw new DirectoryNotFoundException($"{cfg.RmModel} has no onnx/ reward export; rerun `rlhf rm` or pass --reward-model.");
        return RewardScorer.Load(path, new RewardScorerOptions { Threads = cfg.Threads });
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
