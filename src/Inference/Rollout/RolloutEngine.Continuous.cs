using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Rlhf.Inference.Rollout;

/// <summary>
/// One generate call that joins a running continuous batch (<see cref="IContinuousBatching.RunContinuous"/>): its
/// requests (one row each), the weights version it needs, its cancellation and where its tokens and results go. The
/// engine calls <see cref="RowDone"/> once per row as that row ends, or <see cref="Failed"/> once (a bad request, a
/// version mismatch, cancellation, an engine failure); after <see cref="Failed"/> no callback of the call comes.
/// </summary>
/// <param name="Requests">The call's requests; row k is request k.</param>
/// <param name="RequiredVersion">The weights version the results must come from; null = whatever is loaded.</param>
/// <param name="Cancel">Checked at every decode step; a cancelled call leaves the batch at once (its rows free their slots).</param>
/// <param name="OnToken">Each sampled token, <see cref="SampledToken.Request"/> = k, on the engine's thread, in order per row.</param>
/// <param name="RowDone">Row k's result, as the row ends.</param>
/// <param name="Failed">Why the call ended without all its rows (an <see cref="OperationCanceledException"/> for cancellation).</param>
public sealed record BatchCall(IReadOnlyList<RolloutRequest> Requests, ulong? RequiredVersion, CancellationToken Cancel,
    Action<SampledToken>? OnToken, Action<int, RolloutResult> RowDone, Action<Exception> Failed);

/// <summary>An engine that runs one continuous batch: calls join and leave it at decode-step boundaries.</summary>
public interface IContinuousBatching
{
    /// <summary>
    /// Decodes until no row is live and <paramref name="admit"/> brings none. Before every decode step the engine asks
    /// <paramref name="admit"/>(free rows) for calls to add (at most that many rows in all; none is asked while a weight
    /// swap waits, so the batch drains and the swap goes in between); their prompts are prefilled and their rows join
    /// the next step. Results come through each call's callbacks; the method returns when the batch is empty.
    /// </summary>
    void RunContinuous(Func<int, IReadOnlyList<BatchCall>> admit, int maxRows);
}

/// <summary>
/// Continuous batching over the KV cache (<see cref="IContinuousBatching"/>), for the inference server. PPO's rollouts
/// do not come here: they call <see cref="Generate(IReadOnlyList{RolloutRequest}, ulong?, CancellationToken, Action{SampledToken}?)"/>.
/// <para><b>Slot scheme.</b> The live rows share one cache per layer, key and value each <c>[B, Hkv, C, D]</c> (B live
/// rows, C columns); row b's keys/values fill columns <c>[start_b, start_b + len_b)</c> (len_b: tokens in the cache).
/// Which columns depends on the graph:</para>
/// <list type="bullet">
/// <item><b>GroupQueryAttention graph</b> (positions from the mask, <c>past_present_share_buffer</c>): rows start at
/// column 0 (right padding) and C is the capacity max_b(prompt_b + max_new_b); the buffer is bound as past and present,
/// so a step writes each row's new key/value at its own column len_b in place. Step inputs: <c>input_ids</c> [B, 1],
/// <c>attention_mask</c> [B, W] with W = max_b len_b + 1 and row b's first len_b + 1 entries 1.</item>
/// <item><b>Plain graph</b> (explicit <c>position_ids</c>, concatenated cache): rows end at the last column (left
/// padding), C = max_b len_b and start_b = C − len_b; a step's present is <c>[B, Hkv, C + 1, D]</c> and becomes the
/// next past. Step inputs: <c>input_ids</c> [B, 1], <c>position_ids</c> [B, 1] = len_b, <c>attention_mask</c>
/// [B, C + 1] with 1 from column start_b on. Masked columns are zeros, never garbage.</item>
/// </list>
/// <para><b>Joining.</b> At a step boundary the calls that <c>admit</c> brings are prefilled together as their own
/// batch (<c>input_ids</c> [k, P], padded as above; the GQA graph into a fresh shared buffer), each row samples its first
/// token from its last prompt position, and the cache is rebuilt: a new <c>[B', Hkv, C', D]</c> per layer into which
/// the kept rows and the joined rows copy their columns (for an empty batch the prefill's cache is taken as it is). A
/// row that ends (EOS, length, stop string) or whose call is cancelled leaves at the next boundary, by the same rebuild,
/// so later steps compute only live rows. Each row keeps its own seed and sampler state and attends only to its own
/// columns, so its tokens are those it gets alone.</para>
/// </summary>
public sealed partial class RolloutEngine : IContinuousBatching
{
    /// <summary>A call's shared state: whether it has ended (failed or cancelled) for all its rows.</summary>
    sealed class CallState(BatchCall call)
    {
        public BatchCall Call { get; } = call;
        public bool Over { get; set; }
    }

    /// <summary>One live row of the continuous batch and its sampling state (as <see cref="RunBatch"/> keeps per row).</summary>
    sealed class Slot
    {
        public Slot(CallState call, int index, int[] prompt, SamplingOptions sampling)
        {
            State = call;
            Index = index;
            Prompt = prompt;
            S = sampling;
            Rng = new Rng(sampling.Seed);
            Stop = sampling.StopStrings.Count > 0 ? new StopStringMatcher(sampling.StopStrings) : null;
            History = new int[prompt.Length + sampling.MaxNewTokens];
            prompt.CopyTo(History, 0);
            LogPs = new float[sampling.MaxNewTokens];
        }

        public CallState State { get; }
        public int Index { get; }
        public int[] Prompt { get; }
        public SamplingOptions S { get; }
        public Rng Rng { get; }
        public StopStringMatcher? Stop { get; }
        public int[] History { get; }          // prompt + generated, for the repetition penalty
        public float[] LogPs { get; }          // [max_new]
        public TokenLogProb[][]? Tops;         // [max_new][k], only when asked for
        public int Generated, TextLen, StopAt = -1;
        public RolloutFinishReason? Reason;
        public int Row;                        // index in the cache's batch dimension
        public int Start, Len;                 // the cache columns [Start, Start + Len) hold this row
        public double PrefillMs;
        public int JoinedWith;                 // rows prefilled together with this one
        public long DecodeFrom;                // Stopwatch timestamp after its prefill
        /// <summary>Cache columns this row can need: prompt + max_new.</summary>
        public int Capacity => Prompt.Length + S.MaxNewTokens;
    }

    /// <inheritdoc/>
    public void RunContinuous(Func<int, IReadOnlyList<BatchCall>> admit, int maxRows)
    {
        ArgumentNullException.ThrowIfNull(admit);
        if (maxRows < 1) throw new ArgumentException($"maxRows must be >= 1; got {maxRows}.", nameof(maxRows));
        while (Volatile.Read(ref _swapsWaiting) > 0) Thread.Sleep(1);   // a waiting weight swap goes first
        lock (Gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var live = new List<Slot>();
            var joined = new List<Slot>();
            OrtValue[]? kv = null;   // 2·layers tensors [B, Hkv, cols, D]
            int cols = 0;
            try
            {
                while (true)
                {
                    bool removed = Retire(live);
                    joined = live.Count < maxRows && Volatile.Read(ref _swapsWaiting) == 0 ? Admit(admit(maxRows - live.Count)) : [];
                    OrtValue[]? joinKv = null;
                    int joinCols = 0;
                    if (joined.Count > 0) (joinKv, joinCols) = Prefill(joined);
                    if (removed || joined.Count > 0)
                    {
                        var keep = joined.Where(s => s.Reason is null).ToList();
                        (kv, cols) = Rebuild(kv, cols, live, joinKv, joinCols, keep, joined.Count);
                        live.AddRange(keep);
                    }
                    joined = [];
                    if (live.Count == 0)
                    {
                        if (joinKv is null) break;   // nothing live, nothing came
                        continue;
                    }
                    Step(live, ref kv, ref cols);
                }
            }
            catch (Exception e)
            {
                foreach (var s in live.Concat(joined)) FailCall(s.State, e);
                throw;
            }
            finally
            {
                if (kv is not null) foreach (var v in kv) v.Dispose();
            }
        }
    }

    /// <summary>Removes rows that ended or whose call was cancelled or failed; true when any left.</summary>
    static bool Retire(List<Slot> live)
    {
        foreach (var s in live)
            if (s.Reason is null && !s.State.Over && s.State.Call.Cancel.IsCancellationRequested) FailCall(s.State, new OperationCanceledException(s.State.Call.Cancel));
        return live.RemoveAll(s => s.Reason is not null || s.State.Over) > 0;
    }

    /// <summary>Ends <paramref name="state"/>'s call with <paramref name="e"/> (once).</summary>
    static void FailCall(CallState state, Exception e)
    {
        if (state.Over) return;
        state.Over = true;
        state.Call.Failed(e);
    }

    /// <summary>The rows of the admitted calls that can run: a call with a bad request, a version mismatch or already cancelled fails here.</summary>
    List<Slot> Admit(IReadOnlyList<BatchCall> calls)
    {
        var rows = new List<Slot>();
        foreach (var call in calls)
        {
            var state = new CallState(call);
            try
            {
                CheckVersion(call.RequiredVersion);
                call.Cancel.ThrowIfCancellationRequested();
                var (prompts, sampling) = RolloutRows.Prepare(call.Requests, Tokenizer, Signature.VocabSize, _context,
                    "A text prompt needs a tokenizer: put the tokenizer files in the ONNX folder or pass one to RolloutEngine.Load.");
                for (int k = 0; k < prompts.Length; k++) rows.Add(new Slot(state, k, prompts[k], sampling[k]));
            }
            catch (Exception e) when (e is ArgumentException or Services.WeightsVersionMismatchException or OperationCanceledException)
            {
                FailCall(state, e);
            }
        }
        return rows;
    }

    /// <summary>
    /// Prefills <paramref name="rows"/> as one batch (<c>input_ids</c> [k, P]; GQA: right padding into a shared buffer
    /// [k, Hkv, max capacity, D]; plain: left padding with positions, presents [k, Hkv, P, D]) and samples each row's
    /// first token. Returns the prefill's cache and its column count; sets each row's Row, Start, Len.
    /// </summary>
    (OrtValue[] Kv, int Cols) Prefill(List<Slot> rows)
    {
        var sig = Signature;
        var sw = Stopwatch.StartNew();
        int k = rows.Count, P = rows.Max(s => s.Prompt.Length), V = sig.VocabSize;
        bool gqa = sig.PositionsFromMask;
        var ids = new long[k * P];
        var mask = new long[k * P];
        var pos = new long[k * P];
        for (int i = 0; i < k; i++)
        {
            var s = rows[i];
            int len = s.Prompt.Length, pad = gqa ? 0 : P - len;
            for (int j = 0; j < P; j++)
            {
                int t = j - pad;                     // index into the prompt, or out of range for a pad
                bool real = t >= 0 && t < len;
                ids[i * P + j] = real ? s.Prompt[t] : _pad;
                mask[i * P + j] = real ? 1 : 0;
                pos[i * P + j] = real ? t : 0;
            }
            (s.Row, s.Start, s.Len) = (i, pad, len);
        }
        int cols = gqa ? rows.Max(s => s.Capacity) : P;
        OrtValue[]? kv = gqa ? NewCache(k, cols, clear: false) : null;
        var (names, values) = Inputs(ids, [k, P], mask, [k, P], pos, kv, k, 0);
        using (var logits = Forward(names, values, ref kv, gqa))
        {
            var all = logits.GetTensorDataAsSpan<float>();
            double ms = sw.Elapsed.TotalMilliseconds;
            long now = Stopwatch.GetTimestamp();
            for (int i = 0; i < k; i++)
            {
                var s = rows[i];
                (s.PrefillMs, s.JoinedWith, s.DecodeFrom) = (ms, k, now);
                int at = gqa ? s.Prompt.Length - 1 : P - 1;
                if (!s.State.Over) Sample(s, all.Slice((i * P + at) * V, V));
            }
        }
        return (kv!, cols);
    }

    /// <summary>
    /// The cache of <paramref name="kept"/> (rows of <paramref name="old"/>) followed by <paramref name="joined"/> (rows of
    /// <paramref name="fresh"/>, which held <paramref name="freshRows"/> rows): new [B', Hkv, C', D] tensors with each
    /// row's columns copied to where the slot scheme puts them (see the class comment), or <paramref name="fresh"/> itself
    /// when it is the whole batch. The inputs are disposed. Updates each row's Row and Start.
    /// </summary>
    (OrtValue[]? Kv, int Cols) Rebuild(OrtValue[]? old, int oldCols, List<Slot> kept, OrtValue[]? fresh, int freshCols, List<Slot> joined, int freshRows)
    {
        var sig = Signature;
        bool gqa = sig.PositionsFromMask;
        if (kept.Count == 0 && joined.Count == freshRows && fresh is not null)
        {
            DisposeAll(old);
            return (fresh, freshCols);
        }
        var rows = kept.Concat(joined).ToList();
        if (rows.Count == 0)
        {
            DisposeAll(old);
            DisposeAll(fresh);
            return (null, 0);
        }
        int cols = gqa ? rows.Max(s => s.Capacity) : rows.Max(s => s.Len);
        var kv = NewCache(rows.Count, cols, clear: !gqa);
        int H = sig.KvHeads, D = sig.HeadDim;
        for (int t = 0; t < kv.Length; t++)
        {
            var dst = kv[t].GetTensorMutableDataAsSpan<float>();
            for (int i = 0; i < rows.Count; i++)
            {
                var s = rows[i];
                bool isKept = i < kept.Count;
                var src = (isKept ? old! : fresh!)[t].GetTensorDataAsSpan<float>();
                int srcCols = isKept ? oldCols : freshCols, start = gqa ? 0 : cols - s.Len;
                for (int h = 0; h < H; h++)
                    src.Slice(((s.Row * H + h) * srcCols + s.Start) * D, s.Len * D)
                       .CopyTo(dst.Slice(((i * H + h) * cols + start) * D, s.Len * D));
            }
        }
        for (int i = 0; i < rows.Count; i++) (rows[i].Row, rows[i].Start) = (i, gqa ? 0 : cols - rows[i].Len);
        DisposeAll(old);
        DisposeAll(fresh);
        return (kv, cols);
    }

    /// <summary>
    /// One decode step of every live row: feeds each row's last sampled token (<c>input_ids</c> [B, 1]) at position
    /// len_b, appends its key/value (GQA: in place at column len_b; plain: the present [B, Hkv, cols + 1, D] replaces the
    /// cache) and samples the next token from logits [B, 1, V].
    /// </summary>
    void Step(List<Slot> live, ref OrtValue[]? kv, ref int cols)
    {
        bool gqa = Signature.PositionsFromMask;
        int B = live.Count, V = Signature.VocabSize;
        int W = gqa ? live.Max(s => s.Len) + 1 : cols + 1;
        var ids = new long[B];
        var pos = new long[B];
        var mask = new long[B * W];
        for (int i = 0; i < B; i++)
        {
            var s = live[i];
            ids[i] = s.History[s.Prompt.Length + s.Generated - 1];
            pos[i] = s.Len;
            int from = gqa ? 0 : s.Start, to = gqa ? s.Len + 1 : W;
            for (int j = from; j < to; j++) mask[i * W + j] = 1;
        }
        var (names, values) = Inputs(ids, [B, 1], mask, [B, W], pos, kv, B, 0);
        using var logits = Forward(names, values, ref kv, gqa);
        if (!gqa) cols++;
        var all = logits.GetTensorDataAsSpan<float>();
        for (int i = 0; i < B; i++)
        {
            live[i].Len++;
            if (!live[i].State.Over) Sample(live[i], all.Slice(i * V, V));
        }
    }

    /// <summary>A cache of <paramref name="rows"/> rows: 2·layers tensors [rows, Hkv, cols, D] (zeroed with <paramref name="clear"/>).</summary>
    OrtValue[] NewCache(int rows, int cols, bool clear)
    {
        var sig = Signature;
        var kv = new OrtValue[2 * sig.Layers];
        for (int t = 0; t < kv.Length; t++)
        {
            kv[t] = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, TensorElementType.Float, [rows, sig.KvHeads, cols, sig.HeadDim]);
            if (clear) kv[t].GetTensorMutableDataAsSpan<float>().Clear();
        }
        return kv;
    }

    static void DisposeAll(OrtValue[]? values)
    {
        if (values is not null) foreach (var v in values) v.Dispose();
    }

    /// <summary>Samples row <paramref name="s"/>'s next token from its logits [V] exactly as <see cref="RunBatch"/> does, reports it, and ends the row when it is done.</summary>
    void Sample(Slot s, ReadOnlySpan<float> logits)
    {
        int prevLen = s.Prompt.Length + s.Generated;
        if (s.S.TopLogProbs > 0)
            (s.Tops ??= new TokenLogProb[s.S.MaxNewTokens][])[s.Generated] = _sampler.TopLogProbs(logits, s.History.AsSpan(0, prevLen), s.S, s.S.TopLogProbs);
        int token = _sampler.Sample(logits, s.History.AsSpan(0, prevLen), s.S, s.Rng, out float lp);
        s.History[prevLen] = token;
        s.LogPs[s.Generated] = lp;
        s.Generated++;
        s.State.Call.OnToken?.Invoke(new SampledToken(s.Index, token, lp, s.Tops?[s.Generated - 1]));
        if (Array.IndexOf(_eos, token) >= 0) s.Reason = RolloutFinishReason.Eos;
        else if (s.Stop is { } m && RolloutRows.CheckStop(Tokenizer!, m, s.History.AsSpan(s.Prompt.Length, s.Generated), ref s.TextLen, ref s.StopAt))
            s.Reason = RolloutFinishReason.StopString;
        else if (s.Generated >= s.S.MaxNewTokens) s.Reason = RolloutFinishReason.Length;
        if (s.Reason is null) return;
        int[] response = s.History.AsSpan(s.Prompt.Length, s.Generated).ToArray();
        double decodeMs = Stopwatch.GetElapsedTime(s.DecodeFrom).TotalMilliseconds;
        s.State.Call.RowDone(s.Index, new RolloutResult(s.Prompt, response, RolloutRows.Text(Tokenizer, response, s.Reason, s.StopAt), s.LogPs[..s.Generated],
            s.Reason.Value, new RolloutTimings(s.PrefillMs, decodeMs, s.JoinedWith, s.Generated), Version, s.Tops?[..s.Generated]));
    }
}
