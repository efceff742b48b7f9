using Microsoft.ML.OnnxRuntime;
using Rlhf.Inference.Rollout;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.OnnxExport;

/// <summary>Largest |ORT − TorchSharp| logits difference in the prefill and in the decode steps of one check.</summary>
public sealed record PolicyParity(double Prefill, double Decode)
{
    /// <summary>The larger of the two.</summary>
    public double Max => Math.Max(Prefill, Decode);
}

/// <summary>
/// ORT vs TorchSharp agreement of exported folders on random token sequences. The reference for every position is
/// the TorchSharp model's full forward over that row alone (unpadded), so padding and KV-cache handling in the ONNX
/// graph are checked against the plainest possible computation.
/// </summary>
public static class OnnxParity
{
    /// <summary>
    /// Prefill of rows of <paramref name="lengths"/> real tokens (padded to the longest, on the left or right), then
    /// <paramref name="steps"/> single-token decode steps through the KV cache, each row growing by one token.
    /// The decode layout follows the graph: the plain graph appends a mask column (gaps stay masked, position = real
    /// tokens so far); the GQA graph keeps each row contiguous from slot 0 (mask row = ones then zeros), as GroupQueryAttention requires.
    /// Logits are compared at every real position. The model must be on the CPU in float32 (put it in eval mode first).
    /// With <paramref name="sharedBuffer"/> (GQA graph only) the past is a buffer of max_length = longest row + steps
    /// slots from the start, as GenAI runs it with <c>past_present_share_buffer</c>.
    /// </summary>
    public static PolicyParity Policy(LlamaForCausalLM model, string folder, int[] lengths, int steps, bool leftPad, int seed, int threads = 2,
        bool sharedBuffer = false, IReadOnlyDictionary<string, Rlhf.Inference.Rollout.WeightBuffer>? adapter = null)
    {
        if (lengths.Length == 0 || lengths.Any(l => l < 1)) throw new ArgumentException("Every row needs at least one token.", nameof(lengths));
        using var decoder = RolloutEngine.OpenDecoder(folder, threads);
        if (adapter is not null) decoder.UpdateWeights(adapter);   // a LoRA-input graph: the adapter fed on every run
        bool gqa = decoder.Signature.PositionIds is null;
        if (gqa && leftPad) throw new ArgumentException("The GroupQueryAttention graph supports right padding only.", nameof(leftPad));
        if (!gqa && sharedBuffer) throw new ArgumentException("Only the GroupQueryAttention graph takes a shared past/present buffer.", nameof(sharedBuffer));
        var cfg = model.Config;
        int B = lengths.Length, W = lengths.Max();
        var rng = new Random(seed);
        var rows = lengths.Select(n => Enumerable.Range(0, n + steps).Select(_ => (long)rng.Next(1, cfg.VocabSize)).ToArray()).ToArray();
        var reference = rows.Select(r => RowLogits(model, r)).ToArray();                                  // [B][L, V]
        int V = cfg.VocabSize;

        var ids = new long[B, W];
        var mask = new long[B, W];
        var pos = new long[B, W];
        for (int b = 0; b < B; b++)
            for (int j = 0; j < lengths[b]; j++)
            {
                int col = leftPad ? W - lengths[b] + j : j;
                ids[b, col] = rows[b][j];
                mask[b, col] = 1;
                pos[b, col] = j;
            }
        double prefill = 0, decode = 0;
        var step = decoder.Forward(ids, mask, pos, null, sharedBuffer ? W + steps : 0);
        try
        {
            for (int b = 0; b < B; b++)
                for (int j = 0; j < lengths[b]; j++)
                    prefill = Math.Max(prefill, MaxDiff(step.LogitsAt(b, leftPad ? W - lengths[b] + j : j), reference[b], j * V));
            for (int k = 0; k < steps; k++)
            {
                int t = W + k + 1;
                var stepIds = new long[B, 1];
                var stepPos = new long[B, 1];
                var stepMask = new long[B, t];
                for (int b = 0; b < B; b++)
                {
                    int n = lengths[b] + k;                                   // real tokens before this one
                    stepIds[b, 0] = rows[b][n];
                    stepPos[b, 0] = n;
                    if (gqa) for (int c = 0; c <= n; c++) stepMask[b, c] = 1;
                    else
                    {
                        for (int c = 0; c < t - 1; c++) stepMask[b, c] = c < W ? mask[b, c] : 1;
                        stepMask[b, t - 1] = 1;
                    }
                }
                var next = decoder.Forward(stepIds, stepMask, stepPos, step);
                step.Dispose();
                step = next;
                for (int b = 0; b < B; b++)
                    decode = Math.Max(decode, MaxDiff(step.LogitsAt(b, 0), reference[b], (lengths[b] + k) * V));
            }
        }
        finally
        {
            step.Dispose();
        }
        return new PolicyParity(prefill, decode);
    }

    /// <summary>
    /// Reward/value folder vs <see cref="LlamaForSequenceClassification.Scores"/> and <see cref="LlamaForSequenceClassification.Values"/>
    /// on rows of <paramref name="lengths"/> real tokens, padded on the left and on the right. Returns the largest
    /// difference over rewards and values at real positions.
    /// </summary>
    public static double Reward(LlamaForSequenceClassification model, string folder, int[] lengths, int seed, int threads = 2)
    {
        using var options = new SessionOptions { IntraOpNumThreads = Math.Max(1, threads) };
        using var session = new InferenceSession(Path.Combine(folder, "model.onnx"), options);
        var rng = new Random(seed);
        int B = lengths.Length, W = lengths.Max();
        double max = 0;
        foreach (bool left in new[] { false, true })
        {
            var ids = new long[B * W];
            var mask = new long[B * W];
            for (int b = 0; b < B; b++)
                for (int j = 0; j < lengths[b]; j++)
                {
                    int col = left ? W - lengths[b] + j : j;
                    ids[b * W + col] = rng.Next(1, model.Config.VocabSize);
                    mask[b * W + col] = 1;
                }
            using var idsV = OrtValue.CreateTensorValueFromMemory(ids, [B, W]);
            using var maskV = OrtValue.CreateTensorValueFromMemory(mask, [B, W]);
            using var runOptions = new RunOptions();
            using var outs = session.Run(runOptions, ["input_ids", "attention_mask"], [idsV, maskV], ["rewards", "values"]);
            float[] rewards = outs[0].GetTensorDataAsSpan<float>().ToArray(), values = outs[1].GetTensorDataAsSpan<float>().ToArray();
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var idsT = torch.tensor(ids, [B, W]);
            var maskT = torch.tensor(mask, [B, W]);
            float[] refScores = model.Scores(idsT, maskT).cpu().data<float>().ToArray();
            float[] refValues = model.Values(idsT, maskT).cpu().contiguous().data<float>().ToArray();
            for (int b = 0; b < B; b++)
            {
                max = Math.Max(max, Math.Abs(rewards[b] - refScores[b]));
                for (int c = 0; c < W; c++)
                    if (mask[b * W + c] == 1) max = Math.Max(max, Math.Abs(values[b * W + c] - refValues[b * W + c]));
            }
        }
        return max;
    }

    /// <summary>Full-sequence logits of one unpadded row, flattened [L·V].</summary>
    static float[] RowLogits(LlamaForCausalLM model, long[] row)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var x = torch.tensor(row, [1, row.Length]);
        var mask = torch.ones([1, row.Length], ScalarType.Int64);
        return model.Forward(x, mask, PositionIds.FromAttentionMask(mask)).to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
    }

    static double MaxDiff(float[] ort, float[] reference, int offset)
    {
        double max = 0;
        for (int i = 0; i < ort.Length; i++)
        {
            if (!float.IsFinite(ort[i])) return double.PositiveInfinity;
            max = Math.Max(max, Math.Abs(ort[i] - reference[offset + i]));
        }
        return max;
    }
}
