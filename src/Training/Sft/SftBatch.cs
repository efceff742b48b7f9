using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Sft;

/// <summary>
/// One tokenized demonstration: <c>Ids = [BOS] prompt response [EOS]</c>; the first <c>PromptLength</c> ids are the prompt.
/// A conversation (<see cref="ConversationTokens"/>) also has <c>Loss</c> [Ids.Length]: the ids the loss covers (every
/// learned assistant turn and its end-of-turn token); <c>PromptLength</c> is then the first of them.
/// </summary>
public sealed record TokenizedExample(int[] Ids, int PromptLength, bool[]? Loss = null)
{
    /// <summary>Whether the id at <paramref name="t"/> is a target of the loss (predicted from position t − 1).</summary>
    public bool IsTarget(int t) => t >= 1 && t < Ids.Length && (Loss is null ? t >= PromptLength : Loss[t]);

    /// <summary>How many ids are targets.</summary>
    public long TargetCount => Loss is null ? Ids.Length - Math.Max(PromptLength, 1) : Loss.Skip(1).Count(x => x);
}

/// <summary>A right-padded SFT micro-batch on a device.</summary>
public sealed class SftBatch : IDisposable
{
    /// <summary>Token ids [B, S] int64 (pad id where mask is 0).</summary>
    public required Tensor InputIds { get; init; }
    /// <summary>1 for real tokens [B, S] int64.</summary>
    public required Tensor AttentionMask { get; init; }
    /// <summary>Positions [B, S] int64.</summary>
    public required Tensor PositionIds { get; init; }
    /// <summary>Next-token targets [B, S] int64: Targets[b,t] = InputIds[b,t+1] for response tokens, −100 elsewhere.</summary>
    public required Tensor Targets { get; init; }
    /// <summary>Number of targets that count (response tokens incl. EOS).</summary>
    public required long TargetCount { get; init; }

    /// <inheritdoc />
    public void Dispose()
    {
        InputIds.Dispose(); AttentionMask.Dispose(); PositionIds.Dispose(); Targets.Dispose();
    }

    /// <summary>The ignore index of <see cref="Targets"/>.</summary>
    public const long Ignore = -100;

    /// <summary>
    /// Tokenizes one demonstration, truncating to <paramref name="maxLen"/> tokens in all: a flat one with
    /// <see cref="PromptFormat"/>, a conversation with <paramref name="chat"/> (<see cref="ConversationTokens"/>; BOS first
    /// once, as <see cref="PromptFormat.PromptIds"/> does, so SFT, rollouts and serving see the same prompt tokens).
    /// </summary>
    public static TokenizedExample Tokenize(TextTokenizer tokenizer, SftExample example, int maxLen, ChatTemplate? chat = null)
    {
        if (example.Messages is { } messages)
        {
            if (chat is null) throw new InvalidOperationException("a conversational demonstration needs a chat template");
            var c = ConversationTokens.FromMessages(messages, (m, g) => chat.Render(m, g), tokenizer.Encode, EndOfTurnIds(tokenizer, chat), example.PromptTurns);
            int[] ids = c.Ids;
            bool[] loss = c.Loss;
            if (tokenizer.AddedBosId is int bos && (ids.Length == 0 || ids[0] != bos)) { ids = [bos, .. ids]; loss = [false, .. loss]; }
            int n = Math.Min(ids.Length, maxLen);
            return new TokenizedExample(ids[..n], Math.Max(1, Array.IndexOf(loss, true)), loss[..n]);
        }
        int[] p = PromptFormat.PromptIds(tokenizer, example.Prompt);
        int[] r = PromptFormat.ResponseIds(tokenizer, example.Prompt, example.Response);
        if (p.Length >= maxLen) p = p[..(maxLen - 1)];
        int keep = Math.Min(r.Length, maxLen - p.Length);
        return new TokenizedExample([.. p, .. r[..keep]], p.Length);
    }

    /// <summary>
    /// Right-pads examples into tensors. Target at t is the token at t+1 when t+1 is a response position
    /// (t+1 ≥ PromptLength), so the loss covers response tokens only (prompt tokens are ignore_index).
    /// </summary>
    public static SftBatch Collate(IReadOnlyList<TokenizedExample> examples, int padId, Device device)
    {
        int b = examples.Count;
        int s = examples.Max(e => e.Ids.Length);
        var ids = new long[b * s];
        var mask = new long[b * s];
        var pos = new long[b * s];
        var tgt = new long[b * s];
        long count = 0;
        for (int i = 0; i < b; i++)
        {
            var e = examples[i];
            for (int t = 0; t < s; t++)
            {
                int k = i * s + t;
                bool real = t < e.Ids.Length;
                ids[k] = real ? e.Ids[t] : padId;
                mask[k] = real ? 1 : 0;
                pos[k] = real ? t : 0;
                bool target = e.IsTarget(t + 1);
                tgt[k] = target ? e.Ids[t + 1] : Ignore;
                if (target) count++;
            }
        }
        return new SftBatch
        {
            InputIds = tensor(ids, [b, s], device: device),
            AttentionMask = tensor(mask, [b, s], device: device),
            PositionIds = tensor(pos, [b, s], device: device),
            Targets = tensor(tgt, [b, s], device: device),
            TargetCount = count,
        };
    }

    /// <summary>The ids that end an assistant turn: the tokenizer's EOS and the template's <c>eos_token</c> (e.g. &lt;|im_end|&gt;, &lt;|eot_id|&gt;).</summary>
    static IReadOnlySet<int> EndOfTurnIds(TextTokenizer tokenizer, ChatTemplate chat)
    {
        var ids = new HashSet<int>();
        if (tokenizer.EosId is int eos) ids.Add(eos);
        if (chat.EosToken is { Length: > 0 } text && tokenizer.Encode(text) is [int one]) ids.Add(one);
        return ids;
    }
}

/// <summary>The SFT objective.</summary>
public static class SftLoss
{
    /// <summary>
    /// Summed next-token negative log-likelihood over counted targets:
    /// Σ_{b,t: y[b,t] ≠ −100} −log softmax(logits[b,t])[y[b,t]]. Divide by the target count of the whole optimizer
    /// step so gradient accumulation weights every response token equally.
    /// </summary>
    /// <param name="logits">[B, S, V]</param>
    /// <param name="targets">[B, S] int64, −100 = ignore</param>
    public static Tensor SummedNll(Tensor logits, Tensor targets)
    {
        if (logits.dim() != 3 || targets.dim() != 2 || logits.shape[0] != targets.shape[0] || logits.shape[1] != targets.shape[1])
            throw new ArgumentException($"logits [B,S,V] and targets [B,S] expected, got [{string.Join(",", logits.shape)}] and [{string.Join(",", targets.shape)}]");
        long v = logits.shape[2];
        return nn.functional.cross_entropy(logits.reshape(-1, v).to(ScalarType.Float32), targets.reshape(-1),
            ignore_index: SftBatch.Ignore, reduction: nn.Reduction.Sum);
    }

    /// <summary>
    /// <see cref="SummedNll(Tensor, Tensor)"/> of <paramref name="model"/> on <paramref name="batch"/> without computing
    /// on padding: the rows are packed end to end (<see cref="Model.PackedBatch"/>), and the LM head runs only on the N
    /// positions with a counted target (hidden [R·L, H] → [1, N, H] → logits [1, N, V]); prompt and padding logits would
    /// never be read (with a 49k vocabulary the head is a fifth of a 135M model's matmuls).
    /// </summary>
    public static Tensor SummedNll(Model.LlamaForCausalLM model, SftBatch batch)
    {
        using var packed = Model.PackedBatch.FromPadded(batch.InputIds, batch.AttentionMask);
        long[] targets = batch.Targets.to(CPU).data<long>().ToArray();
        var index = new List<long>();
        var counted = new List<long>();
        for (int k = 0; k < targets.Length; k++)
            if (targets[k] != SftBatch.Ignore)
            {
                index.Add(packed.PaddedToFlat[k]);
                counted.Add(targets[k]);
            }
        using var scope = NewDisposeScope();
        var hidden = model.HiddenStates(packed);                                                       // [R, L, H]
        var h = hidden.reshape(-1, hidden.shape[2]).index_select(0, tensor(index.ToArray(), device: hidden.device)).unsqueeze(0);   // [1, N, H]
        var y = tensor(counted.ToArray(), [1, counted.Count], device: hidden.device);                  // [1, N]
        return scope.MoveToOuter(SummedNll(model.Logits(h), y));
    }
}
