using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// One rollout batch as tensors — the single place where rollouts (plain arrays from the inference side) become tensors.
/// Layout: prompts left-padded to P, responses right-padded to A, so response position t of every row sits at sequence
/// position P + t. No forward reads this padded layout: <see cref="Pack"/> packs the real tokens of the rows
/// (<see cref="Model.PackedBatch"/>) and maps each response token to the packed position that predicts it.
/// </summary>
public sealed class Experience : IDisposable
{
    /// <summary>Prompt length after left padding (P).</summary>
    public required int PromptLength { get; init; }
    /// <summary>[B, P + A] int64 token ids.</summary>
    public required Tensor InputIds { get; init; }
    /// <summary>[B, P + A] int64, 1 = real token.</summary>
    public required Tensor AttentionMask { get; init; }
    /// <summary>[B, A] int64 response tokens (pad where masked).</summary>
    public required Tensor Responses { get; init; }
    /// <summary>[B, A] float32, 1 = response token.</summary>
    public required Tensor ResponseMask { get; init; }

    /// <summary>log π_old(a_t|s_t) recorded with TorchSharp at rollout time [B, A] (set by <see cref="ExperienceMaker"/>).</summary>
    public Tensor? LogpOld { get; set; }
    /// <summary>log π_ref(a_t|s_t) [B, A], kept only where the KL enters the loss (<see cref="AdvantageEstimators.KlInLoss"/>).</summary>
    public Tensor? LogpRef { get; set; }
    /// <summary>The KL coefficient β the experience was made with.</summary>
    public double KlCoef { get; set; }
    /// <summary>V_old(s_t) [B, A]; null without a critic.</summary>
    public Tensor? ValuesOld { get; set; }
    /// <summary>Advantages [B, A] (GAE's, or a critic-free estimator's, <see cref="AdvantageEstimators"/>).</summary>
    public Tensor? Advantages { get; set; }
    /// <summary>Value targets A + V_old [B, A]; null without a critic.</summary>
    public Tensor? Returns { get; set; }
    /// <summary>Truncated importance weights min(π_old/π_rollout, C) [B, A] (<see cref="Tis.Weights"/>); null = not applied.</summary>
    public Tensor? IsWeights { get; set; }

    /// <summary>Rows (B).</summary>
    public long Rows => InputIds.shape[0];

    /// <summary>Builds the tensors from prompt and response ids (each response non-empty or empty; prompts non-empty).</summary>
    public static Experience Build(IReadOnlyList<int[]> prompts, IReadOnlyList<int[]> responses, int padId, Device device)
    {
        if (prompts.Count != responses.Count || prompts.Count == 0)
            throw new ArgumentException($"{prompts.Count} prompts and {responses.Count} responses: need the same non-zero number.");
        int b = prompts.Count, p = prompts.Max(x => x.Length), a = Math.Max(1, responses.Max(x => x.Length)), s = p + a;
        var ids = new long[b * s];
        var mask = new long[b * s];
        var resp = new long[b * a];
        var respMask = new float[b * a];
        for (int i = 0; i < b; i++)
        {
            int pad = p - prompts[i].Length;
            for (int t = 0; t < s; t++)
            {
                int k = i * s + t;
                int token = t < pad ? -1 : t < p ? prompts[i][t - pad] : t - p < responses[i].Length ? responses[i][t - p] : -1;
                ids[k] = token < 0 ? padId : token;
                mask[k] = token < 0 ? 0 : 1;
            }
            for (int t = 0; t < a; t++)
            {
                bool real = t < responses[i].Length;
                resp[i * a + t] = real ? responses[i][t] : padId;
                respMask[i * a + t] = real ? 1f : 0f;
            }
        }
        return new Experience
        {
            PromptLength = p,
            InputIds = tensor(ids, [b, s], device: device),
            AttentionMask = tensor(mask, [b, s], device: device),
            Responses = tensor(resp, [b, a], device: device),
            ResponseMask = tensor(respMask, [b, a], device: device),
        };
    }

    /// <summary>
    /// The rows packed without their padding (<see cref="Model.PackedBatch"/>: each row's real prompt tokens, then its
    /// response tokens) and, for <see cref="PackedResponses"/>, the flat index [B·A] into [R·L] of the position that
    /// predicts each response token (0 where the response is padding). Outputs equal the padded layout's up to float
    /// rounding; on default-task PPO minibatches padding was 53% of the positions.
    /// </summary>
    public (Model.PackedBatch Packed, Tensor ResponseIndex) Pack()
    {
        long b = Rows, s = InputIds.shape[1], a = Responses.shape[1];
        var packed = Model.PackedBatch.FromPadded(InputIds, AttentionMask);
        float[] respMask = ResponseMask.to(CPU).data<float>().ToArray();
        var index = new long[b * a];
        for (long i = 0; i < b; i++)
            for (long t = 0; t < a; t++)
                if (respMask[i * a + t] != 0) index[i * a + t] = packed.PaddedToFlat[i * s + PromptLength - 1 + t];
        return (packed, tensor(index, device: InputIds.device));
    }

    /// <summary>Per-position outputs of <see cref="Pack"/>'s rows [R, L, ·] → the response-predicting positions [B, A, ·].</summary>
    public Tensor PackedResponses(Tensor packedPerPosition, Tensor responseIndex)
    {
        long rl = packedPerPosition.shape[0] * packedPerPosition.shape[1];
        long[] tail = packedPerPosition.shape[2..];
        return packedPerPosition.reshape([rl, .. tail]).index_select(0, responseIndex).view([Rows, Responses.shape[1], .. tail]);
    }

    /// <summary>Rows <paramref name="index"/> of every tensor, as a new experience (for minibatches).</summary>
    public Experience Select(Tensor index) => new()
    {
        PromptLength = PromptLength,
        InputIds = InputIds.index_select(0, index),
        AttentionMask = AttentionMask.index_select(0, index),
        Responses = Responses.index_select(0, index),
        ResponseMask = ResponseMask.index_select(0, index),
        LogpOld = LogpOld?.index_select(0, index),
        LogpRef = LogpRef?.index_select(0, index),
        KlCoef = KlCoef,
        ValuesOld = ValuesOld?.index_select(0, index),
        Advantages = Advantages?.index_select(0, index),
        Returns = Returns?.index_select(0, index),
        IsWeights = IsWeights?.index_select(0, index),
    };

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var t in new[] { InputIds, AttentionMask, Responses, ResponseMask, LogpOld, LogpRef, ValuesOld, Advantages, Returns, IsWeights })
            t?.Dispose();
    }
}
