using Rlhf.Inference.Rollout;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>One row's generated tokens (prompt excluded), why it ended, and each token's log-prob (<see cref="TokenSampler"/>'s definition).</summary>
public sealed record GeneratedSequence(long[] Tokens, RolloutFinishReason FinishReason, float[] LogProbs);

/// <summary>KV-cached batched sampling with the TorchSharp model (left padding, per-row EOS).</summary>
public static class Generation
{
    /// <summary>
    /// The ids that end a response: every EOS the model folder names (config.json, overridden by generation_config.json:
    /// Llama 3.x Instruct lists &lt;|end_of_text|&gt;, &lt;|eom_id|&gt; and &lt;|eot_id|&gt;) and the tokenizer's EOS, in that order, once each.
    /// </summary>
    public static IReadOnlyList<int> StopIds(Rlhf.Export.Hf.ModelConfig config, Rlhf.Inference.Tokenization.TextTokenizer tokenizer) =>
        [.. config.EosTokenIds.Concat(tokenizer.EosId is int e ? [e] : []).Distinct()];

    /// <summary>
    /// Generates continuations of <paramref name="prompts"/> (token ids, each non-empty) with the Inference sampling
    /// settings and the rollout engine's sampler (<see cref="TokenSampler"/>: repetition penalty, temperature (0 =
    /// greedy), top-k, top-p, one draw per step): row r draws from its own <see cref="Rng"/> seeded with
    /// <paramref name="seeds"/>[r] (default <see cref="SamplingOptions.Seed"/> + r), so a row's tokens depend on its seed,
    /// the model and its prompt only, as a request's do in the ONNX engine; top logprobs and stop strings are not
    /// applied here. A row ends at any of <paramref name="stopIds"/> (kept as its last token, reason
    /// <see cref="RolloutFinishReason.Eos"/>) or after <see cref="SamplingOptions.MaxNewTokens"/>. Prompts are left-padded
    /// with <paramref name="padId"/> (<see cref="Rlhf.Inference.Tokenization.TextTokenizer.PaddingId"/>; never attended
    /// to); positions come from the attention mask, so each row sees what it would alone. The model runs in eval mode
    /// without gradients (its training flag is restored afterwards).
    /// </summary>
    public static IReadOnlyList<GeneratedSequence> Generate(LlamaForCausalLM model, IReadOnlyList<long[]> prompts, SamplingOptions options,
        IReadOnlyList<int> stopIds, int padId, IReadOnlyList<ulong>? seeds = null)
    {
        if (seeds is not null && seeds.Count != prompts.Count) throw new ArgumentException($"{seeds.Count} seeds for {prompts.Count} prompts.", nameof(seeds));
        if (prompts.Count == 0) return [];
        if (prompts.Any(p => p.Length == 0)) throw new ArgumentException("Every prompt needs at least one token.", nameof(prompts));
        if (options.MaxNewTokens <= 0) return prompts.Select(_ => new GeneratedSequence([], RolloutFinishReason.Length, [])).ToList();
        int b = prompts.Count, p = prompts.Max(x => x.Length);
        var device = HfCheckpoint.DeviceOf(model);
        var eos = stopIds.Select(x => (long)x).ToHashSet();

        var ids = new long[b * p];
        var mask = new long[b * p];
        for (int r = 0; r < b; r++)
        {
            int pad = p - prompts[r].Length;
            for (int j = 0; j < p; j++)
            {
                ids[r * p + j] = j < pad ? padId : prompts[r][j - pad];
                mask[r * p + j] = j < pad ? 0 : 1;
            }
        }

        bool wasTraining = model.training;
        model.eval();
        var outputs = Enumerable.Range(0, b).Select(_ => new List<long>()).ToArray();
        var logProbs = Enumerable.Range(0, b).Select(_ => new List<float>()).ToArray();
        var previous = prompts.Select(x => x.Select(t => (int)t).ToList()).ToArray();   // for the repetition penalty
        var rngs = Enumerable.Range(0, b).Select(r => new Rng(seeds?[r] ?? options.Seed + (ulong)r)).ToArray();
        var sampler = new TokenSampler((int)model.Config.VocabSize);
        var finished = new bool[b];
        try
        {
            using var noGrad = torch.no_grad();
            using var cache = new KvCache(model.Config.NumHiddenLayers);
            var attn = torch.tensor(mask, [b, p], device: device);
            Tensor last;
            using (var scope = torch.NewDisposeScope())
            {
                var inputIds = torch.tensor(ids, [b, p], device: device);
                var pos = PositionIds.FromAttentionMask(attn);
                last = scope.MoveToOuter(model.Forward(inputIds, attn, pos, cache).select(1, -1));   // [B, V]
            }
            for (int step = 0; ; step++)
            {
                using var scope = torch.NewDisposeScope();
                float[] rows = last.to(ScalarType.Float32).cpu().data<float>().ToArray();   // [B·V]
                int v = rows.Length / b;
                var next = new long[b];
                for (int r = 0; r < b; r++)
                {
                    if (finished[r]) { next[r] = padId; continue; }
                    next[r] = sampler.Sample(rows.AsSpan(r * v, v), System.Runtime.InteropServices.CollectionsMarshal.AsSpan(previous[r]), options, rngs[r], out float lp);
                    outputs[r].Add(next[r]);
                    logProbs[r].Add(lp);
                    previous[r].Add((int)next[r]);
                    if (eos.Contains(next[r])) finished[r] = true;
                }
                if (finished.All(f => f) || step + 1 >= options.MaxNewTokens) break;
                var grown = torch.cat([attn, torch.ones([b, 1], ScalarType.Int64, device)], 1);  // [B, T+1]
                var pos = (grown.sum(-1, type: ScalarType.Int64) - 1).unsqueeze(1);              // [B, 1]
                var logits = model.Forward(torch.tensor(next, [b, 1], device: device), grown, pos, cache);
                last.Dispose();
                attn.Dispose();
                last = scope.MoveToOuter(logits.select(1, -1));
                attn = scope.MoveToOuter(grown);
            }
            last.Dispose();
            attn.Dispose();
        }
        finally
        {
            model.train(wasTraining);
        }
        return outputs.Select((o, r) => new GeneratedSequence(o.ToArray(), finished[r] ? RolloutFinishReason.Eos : RolloutFinishReason.Length, logProbs[r].ToArray())).ToList();
    }
}
