using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>Sampling settings (HF <c>generate</c> names).</summary>
public sealed record GenerationOptions
{
    /// <summary>Most tokens generated per row.</summary>
    public int MaxNewTokens { get; init; } = 64;
    /// <summary>Softmax temperature; 0 = greedy.</summary>
    public double Temperature { get; init; } = 1.0;
    /// <summary>Keep only the k most likely tokens; 0 = off.</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus mass; 1 = off.</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Seed of the sampling generator (same seed, same model, same prompts -> same tokens).</summary>
    public long Seed { get; init; }
    /// <summary>Tokens that end a row (the EOS token is included in the output).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    /// <summary>Token used for left padding and for rows already finished (never attended to).</summary>
    public int PadTokenId { get; init; }
}

/// <summary>Why a row stopped.</summary>
public enum FinishReason
{
    /// <summary>An EOS token was generated (it is the last token).</summary>
    Stop,
    /// <summary><see cref="GenerationOptions.MaxNewTokens"/> was reached.</summary>
    Length,
}

/// <summary>One row's generated tokens (prompt excluded) and why it ended.</summary>
public sealed record GeneratedSequence(long[] Tokens, FinishReason FinishReason);

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
    /// Generates continuations of <paramref name="prompts"/> (token ids, each non-empty). Prompts are left-padded to a
    /// batch; positions come from the attention mask, so each row sees what it would alone. The model runs in eval
    /// mode without gradients (its training flag is restored afterwards).
    /// </summary>
    public static IReadOnlyList<GeneratedSequence> Generate(LlamaForCausalLM model, IReadOnlyList<long[]> prompts, GenerationOptions options)
    {
        if (prompts.Count == 0) return [];
        if (prompts.Any(p => p.Length == 0)) throw new ArgumentException("Every prompt needs at least one token.", nameof(prompts));
        if (options.MaxNewTokens <= 0) return prompts.Select(_ => new GeneratedSequence([], FinishReason.Length)).ToList();
        int b = prompts.Count, p = prompts.Max(x => x.Length);
        var device = HfCheckpoint.DeviceOf(model);
        var eos = options.EosTokenIds.Select(x => (long)x).ToHashSet();

        var ids = new long[b * p];
        var mask = new long[b * p];
        for (int r = 0; r < b; r++)
        {
            int pad = p - prompts[r].Length;
            for (int j = 0; j < p; j++)
            {
                ids[r * p + j] = j < pad ? options.PadTokenId : prompts[r][j - pad];
                mask[r * p + j] = j < pad ? 0 : 1;
            }
        }

        bool wasTraining = model.training;
        model.eval();
        var outputs = Enumerable.Range(0, b).Select(_ => new List<long>()).ToArray();
        var finished = new bool[b];
        try
        {
            using var noGrad = torch.no_grad();
            using var cache = new KvCache(model.Config.NumHiddenLayers);
            using var gen = options.Temperature > 0 ? new torch.Generator((ulong)options.Seed, device) : null;
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
                var next = Sampling.Next(last, options.Temperature, options.TopK, options.TopP, gen).cpu().data<long>().ToArray();
                for (int r = 0; r < b; r++)
                {
                    if (finished[r]) { next[r] = options.PadTokenId; continue; }
                    outputs[r].Add(next[r]);
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
        return outputs.Select((o, r) => new GeneratedSequence(o.ToArray(), finished[r] ? FinishReason.Stop : FinishReason.Length)).ToList();
    }
}
