using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// One rollout batch as tensors — the single place where rollouts (plain arrays from the inference side) become tensors.
/// The rows' token ids stay arrays (a prompt and a response per row); the per-response-token tensors are [B, A], each
/// response right-padded to A. Forwards read the rows packed end to end without padding (<see cref="Pack"/>).
/// </summary>
public sealed class Experience : IDisposable
{
    /// <summary>Each row's prompt token ids (non-empty).</summary>
    public required IReadOnlyList<int[]> PromptIds { get; init; }
    /// <summary>Each row's response token ids (possibly empty).</summary>
    public required IReadOnlyList<int[]> ResponseIds { get; init; }
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
    public long Rows => PromptIds.Count;

    /// <summary>The response tensors of prompt and response ids (prompts non-empty, responses possibly empty).</summary>
    public static Experience Build(IReadOnlyList<int[]> prompts, IReadOnlyList<int[]> responses, int padId, Device device)
    {
        if (prompts.Count != responses.Count || prompts.Count == 0)
            throw new ArgumentException($"{prompts.Count} prompts and {responses.Count} responses: need the same non-zero number.");
        if (prompts.Any(x => x.Length == 0)) throw new ArgumentException("Every row needs a prompt token.");
        int b = prompts.Count, a = Math.Max(1, responses.Max(x => x.Length));
        var resp = new long[b * a];
        var respMask = new float[b * a];
        for (int i = 0; i < b; i++)
            for (int t = 0; t < a; t++)
            {
                bool real = t < responses[i].Length;
                resp[i * a + t] = real ? responses[i][t] : padId;
                respMask[i * a + t] = real ? 1f : 0f;
            }
        return new Experience
        {
            PromptIds = prompts,
            ResponseIds = responses,
            Responses = tensor(resp, [b, a], device: device),
            ResponseMask = tensor(respMask, [b, a], device: device),
        };
    }

    /// <summary>
    /// Each row's prompt then response ids packed end to end (<see cref="Model.PackedBatch"/>) and, for
    /// <see cref="PackedResponses"/>, the flat index [B·A] into [R·L] of the position that predicts each response token:
    /// row i's token t is predicted at its sequence position |prompt_i| − 1 + t (index 0 where the response is padding).
    /// On default-task PPO minibatches a padded layout would have been 53% padding.
    /// </summary>
    public (Model.PackedBatch Packed, Tensor ResponseIndex) Pack()
    {
        long a = Responses.shape[1];
        var packed = Model.PackedBatch.Pack([.. PromptIds.Select((p, i) => p.Concat(ResponseIds[i]).Select(x => (long)x).ToArray())], 0, Responses.device);
        var index = new long[Rows * a];
        for (int i = 0; i < Rows; i++)
            for (int t = 0; t < ResponseIds[i].Length; t++)
                index[i * a + t] = packed.Starts[i] + PromptIds[i].Length - 1 + t;
        return (packed, tensor(index, device: Responses.device));
    }

    /// <summary>Per-position outputs of <see cref="Pack"/>'s rows [R, L, ·] → the response-predicting positions [B, A, ·].</summary>
    public Tensor PackedResponses(Tensor packedPerPosition, Tensor responseIndex)
    {
        long rl = packedPerPosition.shape[0] * packedPerPosition.shape[1];
        long[] tail = packedPerPosition.shape[2..];
        return packedPerPosition.reshape([rl, .. tail]).index_select(0, responseIndex).view([Rows, Responses.shape[1], .. tail]);
    }

    /// <summary>Rows <paramref name="rows"/> of every field, as a new experience (for minibatches).</summary>
    public Experience Select(IReadOnlyList<long> rows)
    {
        using var index = tensor(rows.ToArray(), device: Responses.device);
        return new()
        {
            PromptIds = [.. rows.Select(r => PromptIds[(int)r])],
            ResponseIds = [.. rows.Select(r => ResponseIds[(int)r])],
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
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var t in new[] { Responses, ResponseMask, LogpOld, LogpRef, ValuesOld, Advantages, Returns, IsWeights })
            t?.Dispose();
    }
}
