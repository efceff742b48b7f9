using Rlhf.Export.Onnx;
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
    /// The rollout service for <paramref name="actor"/>: ONNX Runtime over a plain-ops export written once to
    /// <paramref name="scratch"/> (weights then flow in memory via <see cref="Sync"/>), or TorchSharp generation.
    /// </summary>
    public static IRolloutService Rollouts(RolloutBackend backend, LlamaForCausalLM actor, TextTokenizer tokenizer, string scratch, int threads) =>
        backend switch
        {
            RolloutBackend.Ort => OrtRollouts(actor, tokenizer, scratch, threads),
            RolloutBackend.Torch => new TorchRollouts(actor, tokenizer),
            _ => throw new ArgumentOutOfRangeException(nameof(backend)),
        };

    static RolloutEngine OrtRollouts(LlamaForCausalLM actor, TextTokenizer tokenizer, string scratch, int threads)
    {
        if (Directory.Exists(scratch)) Directory.Delete(scratch, recursive: true);
        LlamaGraph.Export(actor.Config, actor.state_dict(), scratch);
        var engine = RolloutEngine.Load(scratch, new RolloutEngineOptions { Threads = threads, MaxBatchSize = 64 }, tokenizer);
        return engine;
    }

    /// <summary>Sends <paramref name="policy"/>'s current weights to the rollout service (the TorchSharp backend just samples from it).</summary>
    public static TimeSpan Sync(IRolloutService rollouts, LlamaForCausalLM policy)
    {
        if (rollouts is TorchRollouts torchRollouts)
        {
            torchRollouts.Policy = policy;
            return TimeSpan.Zero;
        }
        var weights = OrtWeights.From(policy);
        return rollouts.UpdateWeights(weights.Buffers, weights);
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
