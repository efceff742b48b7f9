using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>Log-probabilities of chosen tokens under a causal LM's logits.</summary>
public static class LogProbs
{
    /// <summary>
    /// log π(a_t | s_t) = log_softmax(z_t)[a_t] of logits that are already tempered (z / T by
    /// <see cref="Model.Temperature.Scale"/>, so π_old matches the distribution the rollout sampled from), then
    /// log_softmax and gather; no softmax copy is kept. The caller aligns positions: logits[:, t] must be the
    /// distribution of tokens[:, t] (i.e. logits from positions P−1 … P+A−2 for response tokens P … P+A−1).
    /// </summary>
    /// <param name="logits">z / T [B, S, V]</param>
    /// <param name="tokens">token ids [B, S] (int64)</param>
    /// <returns>log-probs [B, S]: float32 for float16/bfloat16 logits (log_softmax is computed in float32 for them), else the logits' dtype</returns>
    public static Tensor OfTokens(Tensor logits, Tensor tokens)
    {
        Shapes.Rank(logits, 3, nameof(logits), "[B, S, V]");
        Shapes.Rank(tokens, 2, nameof(tokens), "[B, S]");
        if (logits.shape[0] != tokens.shape[0] || logits.shape[1] != tokens.shape[1])
            throw new ArgumentException($"logits {Shapes.Of(logits)} must be [B, S, V] for tokens {Shapes.Of(tokens)}", nameof(logits));

        var z = logits.dtype is ScalarType.Float16 or ScalarType.BFloat16 ? logits.to_type(ScalarType.Float32) : logits;
        var logProbs = nn.functional.log_softmax(z, -1);
        return logProbs.gather(-1, tokens.to_type(ScalarType.Int64).unsqueeze(-1)).squeeze(-1);
    }
}
