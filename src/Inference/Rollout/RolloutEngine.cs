using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Rlhf.Inference.Onnx;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Rollout;

/// <summary>How prompts of different lengths share a batch.</summary>
public enum PaddingSide
{
    /// <summary>Pads before the prompt; positions come from the mask (needs a graph with <c>position_ids</c>).</summary>
    Left,
    /// <summary>Pads after the prompt (ONNX Runtime GenAI's layout); the only layout the GroupQueryAttention graph accepts.</summary>
    Right,
}

/// <summary>Engine settings.</summary>
public sealed record RolloutEngineOptions
{
    /// <summary>ONNX Runtime intra-op threads; 0 = all cores (set explicitly: ORT's own 0 ran one thread here).</summary>
    public int Threads { get; init; }
    /// <summary>Padding of prompt batches; ignored (right) for graphs without <c>position_ids</c>.</summary>
    public PaddingSide Padding { get; init; } = PaddingSide.Left;
    /// <summary>Most rows per forward pass; larger request lists run in chunks.</summary>
    public int MaxBatchSize { get; init; } = 64;
    /// <summary>Tokens that end a response; null = genai_config.json's eos_token_id, else the tokenizer's EOS.</summary>
    public IReadOnlyList<int>? EosTokenIds { get; init; }
    /// <summary>Id fed for padding; null = the tokenizer's <see cref="TextTokenizer.PaddingId"/>, else (no tokenizer) genai_config.json's pad_token_id, else 0. Never attended to.</summary>
    public int? PadTokenId { get; init; }
    /// <summary>Drop finished rows from the KV cache so later steps compute only live rows.</summary>
    public bool CompactFinishedRows { get; init; } = true;
    /// <summary>For graphs without position ids (GroupQueryAttention): preallocate one [B, Hkv, prompt + max_new, D]
    /// buffer per layer bound (OrtIoBinding) as both past and present, so no step copies the cache (GenAI's
    /// past_present_share_buffer). The plain graph concatenates its cache and ignores this.</summary>
    public bool ShareKvBuffer { get; init; } = true;
}

/// <summary>
/// Batched KV-cached generation on ONNX Runtime over an exported decoder (plain-ops graph or GroupQueryAttention graph,
/// I/O read by name, see <see cref="DecoderSignature"/>): one prefill pass over the padded prompts, then one token per
/// step for the live rows; per-row EOS, max_new_tokens, stop strings and seed. Only the last-position logits of each
/// row are read (straight from ORT's output buffer); the present KV values of one step are fed back as the next
/// step's past without copies. Safe to call from several threads (calls are serialised on one session; weight
/// updates build the new session outside the lock and swap it in between generate calls, so one call's results all come
/// from one weights version). No TorchSharp types.
/// </summary>
public sealed partial class RolloutEngine : LocalRolloutEngine
{
    readonly string _modelFile;
    readonly RolloutEngineOptions _options;
    readonly int[] _eos;
    readonly int _pad;
    readonly TokenSampler _sampler;
    readonly RunOptions _run = new();
    InferenceSession _session;
    SessionOptions _sessionOptions;
    List<OrtValue> _weightValues = [];
    IDisposable? _weightOwner;
    Dictionary<string, long[]>? _initializers;
    readonly Services.PolicyWeightFormat? _format;
    readonly Dictionary<string, long[]> _loraInputs;   // LoRA factor inputs of the graph -> declared dims (−1 = the rank)
    IReadOnlyList<WeightBuffer> _adapter = [];          // the adapter fed into them on every run (empty: their rank-0 defaults)
    IDisposable? _adapterOwner;
    readonly int? _context;
    int _swapsWaiting;   // weight swaps waiting for the Gate: a continuous batch stops admitting and drains
    bool _disposed;

    RolloutEngine(string modelFile, string folder, RolloutEngineOptions options, TextTokenizer? tokenizer)
    {
        _modelFile = modelFile;
        _options = options;
        if (options.MaxBatchSize < 1) throw new ArgumentException($"MaxBatchSize must be >= 1; got {options.MaxBatchSize}.");
        var metadata = OnnxInitializers.ReadMetadata(modelFile);   // before the session: its options depend on it
        _format = Services.PolicyWeightFormat.FromMetadata(metadata);
        AdapterBase = metadata.GetValueOrDefault(Services.PolicyWeightFormat.LoraBaseKey);
        _sessionOptions = OnnxModelPath.Options(options.Threads, quiet: Quiet);
        _session = new InferenceSession(modelFile, _sessionOptions);
        Signature = DecoderSignature.Read(_session, folder);
        _loraInputs = _session.OverridableInitializerMetadata.Where(kv => Services.PolicyWeightFormat.IsLoraName(kv.Key))
            .ToDictionary(kv => kv.Key, kv => kv.Value.Dimensions.Select(d => (long)d).ToArray(), StringComparer.Ordinal);
        Tokenizer = tokenizer;
        var genai = GenAiConfigFile.Read(folder);
        _eos = options.EosTokenIds is { } e ? [.. e] : genai.EosTokenIds.Length > 0 ? genai.EosTokenIds : tokenizer?.EosId is int te ? [te] : [];
        _pad = options.PadTokenId ?? tokenizer?.PaddingId ?? genai.PadTokenId ?? 0;
        _context = genai.ContextLength;
        _sampler = new TokenSampler(Signature.VocabSize);
    }

    /// <summary>The decoder's I/O names and dimensions.</summary>
    public DecoderSignature Signature { get; }

    /// <summary>The tokenizer used for text prompts, response text and stop strings (null: ids only).</summary>
    public TextTokenizer? Tokenizer { get; }

    /// <summary>Tokens that end a response.</summary>
    public IReadOnlyList<int> EosTokenIds => _eos;

    /// <summary>The padding used: right for graphs without position ids, else <see cref="RolloutEngineOptions.Padding"/>.</summary>
    public PaddingSide Padding => Signature.PositionsFromMask ? PaddingSide.Right : _options.Padding;

    /// <summary>
    /// Opens the decoder at <paramref name="path"/> (an ONNX folder with model.onnx / genai_config.json, or an .onnx file).
    /// The tokenizer is loaded from the folder when it has tokenizer files and none is given.
    /// </summary>
    public static RolloutEngine Load(string path, RolloutEngineOptions? options = null, TextTokenizer? tokenizer = null)
    {
        var (file, folder) = OnnxModelPath.Resolve(path);
        if (tokenizer is null)
        {
            try { tokenizer = TextTokenizer.Load(folder); }
            catch (FileNotFoundException) { tokenizer = null; }
        }
        return new RolloutEngine(file, folder, options ?? new RolloutEngineOptions(), tokenizer);
    }

    /// <summary>The decoder at <paramref name="path"/> for forward passes only (<see cref="Forward"/>, <see cref="Logits"/>): no tokenizer is read.</summary>
    public static RolloutEngine OpenDecoder(string path, int threads)
    {
        var (file, folder) = OnnxModelPath.Resolve(path);
        return new RolloutEngine(file, folder, new RolloutEngineOptions { Threads = threads }, null);
    }

    /// <summary>Generates one response.</summary>
    public RolloutResult Generate(RolloutRequest request) => Generate([request])[0];

    /// <inheritdoc/>
    /// <remarks>The base weights; a graph's LoRA inputs (whose rank is the pushed adapter's) are not listed.</remarks>
    public override IReadOnlyDictionary<string, long[]> WeightLayout =>
        _loraInputs.Count == 0 ? _initializers ??= OnnxInitializers.Read(_modelFile)
                               : (_initializers ??= OnnxInitializers.Read(_modelFile)).Where(kv => !_loraInputs.ContainsKey(kv.Key)).ToDictionary(StringComparer.Ordinal);

    /// <inheritdoc/>
    public override Services.PolicyWeightFormat? WeightFormat => _format;

    /// <inheritdoc/>
    public override string? AdapterBase { get; }

    /// <summary>Sessions log errors only for a graph with LoRA inputs (ORT warns once per overridable initializer otherwise).</summary>
    bool Quiet => _format?.Lora == true;

    /// <summary>
    /// Generates a response for each request (in order), in batches of at most <see cref="RolloutEngineOptions.MaxBatchSize"/>,
    /// all with the weights version loaded when the call starts (<paramref name="requiredVersion"/>: that version or
    /// <see cref="Services.WeightsVersionMismatchException"/>). <paramref name="cancellationToken"/> is checked at every step.
    /// </summary>
    public override IReadOnlyList<RolloutResult> Generate(IReadOnlyList<RolloutRequest> requests, ulong? requiredVersion = null, CancellationToken cancellationToken = default,
        Action<SampledToken>? onToken = null)
    {
        var (prompts, sampling) = RolloutRows.Prepare(requests, Tokenizer, Signature.VocabSize, _context,
            "A text prompt needs a tokenizer: put the tokenizer files in the ONNX folder or pass one to RolloutEngine.Load.");
        var results = new RolloutResult[requests.Count];
        lock (Gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            CheckVersion(requiredVersion);
            for (int start = 0; start < requests.Count; start += _options.MaxBatchSize)
            {
                int n = Math.Min(_options.MaxBatchSize, requests.Count - start);
                int offset = start;
                RunBatch(prompts.AsSpan(start, n).ToArray(), sampling.AsSpan(start, n).ToArray(), results.AsSpan(start, n), cancellationToken,
                    onToken is null ? null : e => onToken(e with { Request = offset + e.Request }));
            }
        }
        return results;
    }

    /// <summary>Logits [S, V] (row-major) of one sequence, all positions, no cache (parity checks and scoring).</summary>
    public float[] Logits(IReadOnlyList<int> ids)
    {
        int s = ids.Count;
        long[] idArr = [.. ids.Select(x => (long)x)];
        long[] mask = [.. Enumerable.Repeat(1L, s)];
        long[] pos = [.. Enumerable.Range(0, s).Select(x => (long)x)];
        lock (Gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var (names, values) = Inputs(idArr, [1, s], mask, [1, s], pos, null, 1, 0);
            using var outputs = _session.Run(_run, names, values, [Signature.Logits]);
            foreach (var v in values) v.Dispose();
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
    }

    /// <summary>
    /// One forward of the decoder with the cache held by the caller (parity checks, benchmarks): ids [B, S], mask [B, T]
    /// (T = past + S), positions [B, S] (ignored by a graph without position ids; required by one with them);
    /// <paramref name="past"/>: the previous step, or null for an empty cache. With no past and
    /// <paramref name="pastCapacity"/> &gt; 0 the past is a zeroed buffer of that many slots, as GenAI passes it with
    /// <c>past_present_share_buffer</c> (graphs without position ids only; their presents then keep that length).
    /// </summary>
    public DecoderStep Forward(long[,] ids, long[,] mask, long[,]? positions, DecoderStep? past, int pastCapacity = 0)
    {
        var sig = Signature;
        int b = ids.GetLength(0);
        if (sig.PositionIds is not null && positions is null) throw new ArgumentException("This graph takes position_ids.", nameof(positions));
        OrtValue[]? zeroed = past is null && pastCapacity > 0
            ? [.. Enumerable.Range(0, 2 * sig.Layers).Select(_ => OrtValue.CreateTensorValueFromMemory(
                new float[(long)b * sig.KvHeads * pastCapacity * sig.HeadDim], [b, sig.KvHeads, pastCapacity, sig.HeadDim]))]
            : null;
        var pastValues = past?.Presents ?? zeroed;
        lock (Gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var (names, values) = Inputs(Flat(ids), [b, ids.GetLength(1)], Flat(mask), [b, mask.GetLength(1)],
                positions is null ? new long[ids.Length] : Flat(positions), pastValues, b, 0);
            try { return new DecoderStep(Signature, _session.Run(_run, names, values, OutputNames()).ToArray()); }
            finally
            {
                foreach (var v in values) if (pastValues is null || !pastValues.Contains(v)) v.Dispose();
                if (zeroed is not null) foreach (var v in zeroed) v.Dispose();
            }
        }

        static long[] Flat(long[,] a)
        {
            var flat = new long[a.Length];
            Buffer.BlockCopy(a, 0, flat, 0, a.Length * sizeof(long));
            return flat;
        }
    }

    (List<string> Names, List<OrtValue> Values) Inputs(long[] ids, long[] idShape, long[] mask, long[] maskShape, long[] pos,
        OrtValue[]? past, int batch, int pastLen)
    {
        var sig = Signature;
        var names = new List<string>(3 + 2 * sig.Layers) { sig.InputIds, sig.AttentionMask };
        var values = new List<OrtValue>(3 + 2 * sig.Layers)
        {
            OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, ids.AsMemory(0, (int)(idShape[0] * idShape[1])), idShape),
            OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, mask.AsMemory(0, (int)(maskShape[0] * maskShape[1])), maskShape),
        };
        if (sig.PositionIds is { } p)
        {
            names.Add(p);
            values.Add(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, pos.AsMemory(0, (int)(idShape[0] * idShape[1])), idShape));
        }
        foreach (var w in _adapter)   // the adapter's factors: views of its arrays, disposed with the call's other inputs
        {
            names.Add(w.Name);
            values.Add(OrtValue.CreateTensorValueFromMemory(w.Array!, w.Shape));
        }
        for (int i = 0; i < sig.Layers; i++)
        {
            names.Add(sig.PastKeys[i]);
            names.Add(sig.PastValues[i]);
            if (past is null)
            {
                values.Add(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, Memory<float>.Empty, [batch, sig.KvHeads, pastLen, sig.HeadDim]));
                values.Add(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, Memory<float>.Empty, [batch, sig.KvHeads, pastLen, sig.HeadDim]));
            }
            else
            {
                values.Add(past[2 * i]);
                values.Add(past[2 * i + 1]);
            }
        }
        return (names, values);
    }

    /// <summary>
    /// One decoder step, the batch loop's and the continuous one's: runs the session on <paramref name="values"/> (which hold <paramref name="kv"/> as the past). Shared buffer: the
    /// cache is bound as past and present and written in place, only the logits are allocated. Otherwise the presents
    /// replace <paramref name="kv"/> (the old cache is disposed). Disposes the inputs made for this call; returns the logits.
    /// </summary>
    OrtValue Forward(List<string> names, List<OrtValue> values, ref OrtValue[]? kv, bool share)
    {
        var past = kv;
        try
        {
            if (share)
            {
                using var binding = _session.CreateIoBinding();
                for (int i = 0; i < names.Count; i++) binding.BindInput(names[i], values[i]);
                binding.BindOutputToDevice(Signature.Logits, OrtMemoryInfo.DefaultInstance);
                for (int l = 0; l < Signature.Layers; l++)
                {
                    binding.BindOutput(Signature.PresentKeys[l], past![2 * l]);
                    binding.BindOutput(Signature.PresentValues[l], past[2 * l + 1]);
                }
                _session.RunWithBinding(_run, binding);
                var bound = binding.GetOutputValues().ToArray();
                foreach (var v in bound.AsSpan(1)) v.Dispose();   // extra handles on our buffers
                return bound[0];
            }
            var outputs = _session.Run(_run, names, values, OutputNames()).ToArray();
            kv = outputs[1..];
            return outputs[0];
        }
        finally
        {
            foreach (var v in values) if (past is null || !past.Contains(v)) v.Dispose();
            if (!share && !ReferenceEquals(kv, past)) DisposeAll(past);
        }
    }

    List<string> OutputNames()
    {
        var names = new List<string>(1 + 2 * Signature.Layers) { Signature.Logits };
        for (int i = 0; i < Signature.Layers; i++) { names.Add(Signature.PresentKeys[i]); names.Add(Signature.PresentValues[i]); }
        return names;
    }

    /// <summary>One batch: prefill, then decode steps until every row has ended; <paramref name="onToken"/> (row-indexed) as each token is sampled.</summary>
    void RunBatch(int[][] prompts, SamplingOptions[] sampling, Span<RolloutResult> results, CancellationToken cancellationToken, Action<SampledToken>? onToken)
    {
        var sig = Signature;
        int n = prompts.Length, V = sig.VocabSize;
        int P = prompts.Max(p => p.Length);
        int maxNew = sampling.Max(s => s.MaxNewTokens);
        bool left = Padding == PaddingSide.Left;
        bool contiguous = sig.PositionsFromMask;   // GQA: row r's mask is len_r + t ones then zeros
        bool share = contiguous && _options.ShareKvBuffer;
        int cap = P + maxNew;

        var rngs = sampling.Select(s => new Rng(s.Seed)).ToArray();
        var stops = sampling.Select(s => s.StopStrings.Count > 0 ? new StopStringMatcher(s.StopStrings) : null).ToArray();
        var history = new int[n][];                  // prompt + generated, for the repetition penalty
        var logps = new float[n][];
        var generated = new int[n];
        var reason = new RolloutFinishReason?[n];
        var stopAt = new int[n];
        var textLen = new int[n];
        var tops = new TokenLogProb[n][][];   // [row][step][k], only for rows that ask
        for (int r = 0; r < n; r++)
        {
            history[r] = new int[prompts[r].Length + sampling[r].MaxNewTokens];
            prompts[r].CopyTo(history[r], 0);
            logps[r] = new float[sampling[r].MaxNewTokens];
            stopAt[r] = -1;
        }

        // Prefill inputs [n, P].
        var ids = new long[n * Math.Max(P, 1)];
        var maskRows = new long[n * cap];            // per original row, stride cap: prefill mask then ones
        var pos = new long[n * P];
        var lastPos = new int[n];
        for (int r = 0; r < n; r++)
        {
            int len = prompts[r].Length, pad = P - len;
            for (int j = 0; j < P; j++)
            {
                int k = left ? j - pad : j;          // index into the prompt, or out of range for a pad
                bool real = k >= 0 && k < len;
                ids[r * P + j] = real ? prompts[r][k] : _pad;
                maskRows[r * cap + j] = real ? 1 : 0;
                pos[r * P + j] = real ? k : 0;
            }
            for (int j = P; j < cap; j++) maskRows[r * cap + j] = 1;
            lastPos[r] = left ? P - 1 : len - 1;
        }

        var live = Enumerable.Range(0, n).ToArray();  // batch slot -> original row
        int B = n;
        var stepIds = new long[n];
        var stepPos = new long[n];
        var stepMask = new long[n * cap];
        OrtValue[]? past = null;
        var sw = Stopwatch.StartNew();
        if (share)
        {
            past = new OrtValue[2 * sig.Layers];
            for (int k = 0; k < past.Length; k++)
                past[k] = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, TensorElementType.Float, [n, sig.KvHeads, cap, sig.HeadDim]);
        }
        double prefillMs = 0;
        int T = P;
        try
        {
            for (int step = 0; ; step++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                List<string> names;
                List<OrtValue> values;
                if (step == 0)
                {
                    CompactMask(maskRows, cap, live, B, T, stepMask, prompts, contiguous, 0);
                    (names, values) = Inputs(ids, [n, P], stepMask, [n, T], pos, past, n, 0);
                }
                else
                {
                    for (int i = 0; i < B; i++)
                    {
                        int r = live[i];
                        if (reason[r] is not null) { stepIds[i] = _pad; continue; }   // only without compaction
                        stepIds[i] = history[r][prompts[r].Length + generated[r] - 1];
                        stepPos[i] = prompts[r].Length + generated[r] - 1;
                    }
                    CompactMask(maskRows, cap, live, B, T, stepMask, prompts, contiguous, step);
                    (names, values) = Inputs(stepIds, [B, 1], stepMask, [B, T], stepPos, past, B, 0);
                }
                using var logits = Forward(names, values, ref past, share);   // past replaced (plain) or written in place (shared buffer)
                if (step == 0) prefillMs = sw.Elapsed.TotalMilliseconds;

                // Sample each live row from its last-position logits, read in place.
                var all = logits.GetTensorDataAsSpan<float>();
                int S = step == 0 ? P : 1;
                bool anyFinished = false;
                for (int i = 0; i < B; i++)
                {
                    int r = live[i];
                    if (reason[r] is not null) continue;
                    int at = step == 0 ? lastPos[r] : 0;
                    var row = all.Slice((i * S + at) * V, V);
                    int prevLen = prompts[r].Length + generated[r];
                    if (sampling[r].TopLogProbs > 0)
                        (tops[r] ??= new TokenLogProb[sampling[r].MaxNewTokens][])[generated[r]] = _sampler.TopLogProbs(row, history[r].AsSpan(0, prevLen), sampling[r], sampling[r].TopLogProbs);
                    int token = _sampler.Sample(row, history[r].AsSpan(0, prevLen), sampling[r], rngs[r], out float lp);
                    history[r][prevLen] = token;
                    logps[r][generated[r]] = lp;
                    generated[r]++;
                    onToken?.Invoke(new SampledToken(r, token, lp, tops[r]?[generated[r] - 1]));
                    if (Array.IndexOf(_eos, token) >= 0) reason[r] = RolloutFinishReason.Eos;
                    else if (stops[r] is { } m && RolloutRows.CheckStop(Tokenizer!, m, history[r].AsSpan(prompts[r].Length, generated[r]), ref textLen[r], ref stopAt[r]))
                        reason[r] = RolloutFinishReason.StopString;
                    else if (generated[r] >= sampling[r].MaxNewTokens) reason[r] = RolloutFinishReason.Length;
                    anyFinished |= reason[r] is not null;
                }
                T++;
                if (anyFinished)
                {
                    var keepSlots = new List<int>(B);
                    for (int i = 0; i < B; i++) if (reason[live[i]] is null) keepSlots.Add(i);
                    if (keepSlots.Count == 0) break;
                    if (_options.CompactFinishedRows)
                    {
                        past = Compact(past!, keepSlots, B);
                        live = [.. keepSlots.Select(i => live[i])];
                        B = live.Length;
                    }
                }
            }
        }
        finally
        {
            if (past is not null) foreach (var v in past) v.Dispose();
        }
        double totalMs = sw.Elapsed.TotalMilliseconds;
        var timings = new RolloutTimings(prefillMs, totalMs - prefillMs, n, generated.Sum());
        for (int r = 0; r < n; r++)
        {
            int[] resp = history[r].AsSpan(prompts[r].Length, generated[r]).ToArray();
            string? text = RolloutRows.Text(Tokenizer, resp, reason[r], stopAt[r]);
            results[r] = new RolloutResult(prompts[r], resp, text, logps[r].AsSpan(0, generated[r]).ToArray(),
                reason[r] ?? RolloutFinishReason.Length, timings, Version, tops[r]?[..generated[r]]);
        }
    }

    /// <summary>Writes the [B, T] mask of the live rows into <paramref name="dst"/>.</summary>
    static long[] CompactMask(long[] rows, int cap, int[] live, int B, int T, long[] dst, int[][] prompts, bool contiguous, int step)
    {
        for (int i = 0; i < B; i++)
        {
            int r = live[i];
            if (contiguous)
            {
                int ones = prompts[r].Length + step;
                for (int j = 0; j < T; j++) dst[i * T + j] = j < ones ? 1 : 0;
            }
            else Array.Copy(rows, r * cap, dst, i * T, T);
        }
        return dst;
    }

    /// <summary>Keeps batch slots <paramref name="keep"/> of every KV tensor [B, Hkv, T, D] (rows are contiguous blocks).</summary>
    static OrtValue[] Compact(OrtValue[] past, List<int> keep, int B)
    {
        var result = new OrtValue[past.Length];
        for (int k = 0; k < past.Length; k++)
        {
            var shape = past[k].GetTensorTypeAndShape().Shape;
            var src = past[k].GetTensorDataAsSpan<float>();
            int rowLen = src.Length / B;
            shape[0] = keep.Count;
            var dst = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, TensorElementType.Float, shape);
            var d = dst.GetTensorMutableDataAsSpan<float>();
            for (int i = 0; i < keep.Count; i++) src.Slice(keep[i] * rowLen, rowLen).CopyTo(d.Slice(i * rowLen, rowLen));
            past[k].Dispose();
            result[k] = dst;
        }
        return result;
    }

    /// <summary>
    /// Replaces the decoder weights with <paramref name="weights"/> (initializer name -> memory) without a file: a new
    /// session is created on the same graph with each named initializer overridden by an OrtValue over the caller's
    /// memory (<see cref="SessionOptions.AddInitializer"/>), then swapped in between batches. Initializers not named keep
    /// the file's values. <paramref name="owner"/> (e.g. the tensors behind pointers) is disposed at the next update or
    /// on disposal; the memory must not change meanwhile. <paramref name="version"/> becomes <see cref="WeightsVersion"/>
    /// (null: unchanged). Returns the time taken.
    /// </summary>
    /// <remarks>
    /// A graph with LoRA inputs (<see cref="Services.PolicyWeightFormat.Lora"/>) also takes an adapter: weights that are
    /// all LoRA factors (<c>….lora_A.weight</c> [in, r], <c>….lora_B.weight</c> [r, out]) replace the adapter fed on every
    /// run, with no new session; the base stays. A push mixing factors and base weights is refused.
    /// </remarks>
    public override TimeSpan UpdateWeights(IReadOnlyDictionary<string, WeightBuffer> weights, IDisposable? owner = null, ulong? version = null)
    {
        ArgumentNullException.ThrowIfNull(weights);
        int factors = weights.Keys.Count(Services.PolicyWeightFormat.IsLoraName);
        if (factors > 0 && factors == weights.Count) return UpdateAdapter(weights, owner, version);
        if (factors > 0)
            throw new ArgumentException($"A push carries {factors} LoRA factors and {weights.Count - factors} base weights; push the adapter alone or the base alone.");
        var sw = Stopwatch.StartNew();
        _initializers ??= OnnxInitializers.Read(_modelFile);
        var problems = new List<string>();
        foreach (var (name, w) in weights)
        {
            if (!_initializers.TryGetValue(name, out var dims)) problems.Add($"'{name}' is not an initializer of the graph");
            else if (!dims.SequenceEqual(w.Shape))
                problems.Add($"'{name}' has shape [{string.Join(", ", w.Shape)}], the graph stores [{string.Join(", ", dims)}]" +
                             (dims.Length == 2 && dims[0] == w.Shape.ElementAtOrDefault(1) && dims[1] == w.Shape.ElementAtOrDefault(0) ? " (pass the transpose)" : ""));
        }
        if (problems.Count > 0)
            throw new ArgumentException("Weights do not fit the decoder graph: " + string.Join("; ", problems.Take(10)) +
                                        (problems.Count > 10 ? $"; and {problems.Count - 10} more" : "") + ".");
        var options = OnnxModelPath.Options(_options.Threads, quiet: Quiet);
        var values = new List<OrtValue>(weights.Count);
        InferenceSession? session = null;
        try
        {
            foreach (var (name, w) in weights)
            {
                w.Validate();
                if (w.Name != name) throw new ArgumentException($"Weight key '{name}' names a buffer called '{w.Name}'.");
                var v = w.Array is not null
                    ? OrtValue.CreateTensorValueFromMemory(w.Array, w.Shape)
                    : OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance,
                        w.Element == WeightElement.Int8 ? TensorElementType.Int8 : TensorElementType.Float, w.Shape, w.Pointer, w.ByteLength);
                values.Add(v);
                options.AddInitializer(name, v);
            }
            session = new InferenceSession(_modelFile, options);
        }
        catch
        {
            session?.Dispose();
            options.Dispose();
            foreach (var v in values) v.Dispose();
            throw;
        }
        InferenceSession oldSession;
        SessionOptions oldOptions;
        List<OrtValue> oldValues;
        IDisposable? oldOwner;
        Interlocked.Increment(ref _swapsWaiting);
        try
        {
            lock (Gate)
            {
                (oldSession, oldOptions, oldValues, oldOwner) = (_session, _sessionOptions, _weightValues, _weightOwner);
                (_session, _sessionOptions, _weightValues, _weightOwner) = (session, options, values, owner);
                if (version is { } v) Version = v;
            }
        }
        finally { Interlocked.Decrement(ref _swapsWaiting); }
        oldSession.Dispose();
        oldOptions.Dispose();
        foreach (var v in oldValues) v.Dispose();
        oldOwner?.Dispose();
        return sw.Elapsed;
    }

    /// <summary>
    /// The adapter <paramref name="factors"/> (float32 arrays; every name a LoRA input of the graph, A [in, r] and B [r, out]
    /// with one rank r per module) fed on every run from now on, swapped in between batches; the session stays.
    /// </summary>
    TimeSpan UpdateAdapter(IReadOnlyDictionary<string, WeightBuffer> factors, IDisposable? owner, ulong? version)
    {
        var sw = Stopwatch.StartNew();
        var problems = new List<string>();
        var ranks = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var (name, w) in factors)
        {
            if (!_loraInputs.TryGetValue(name, out var dims)) { problems.Add($"'{name}' is not a LoRA input of the graph"); continue; }
            if (w.Array is null || w.Element != WeightElement.Float32) { problems.Add($"'{name}' must be a float32 array"); continue; }
            w.Validate();
            bool isA = name.EndsWith(".lora_A.weight", StringComparison.Ordinal);
            long fixedDim = isA ? dims[0] : dims[1], rank = isA ? w.Shape.ElementAtOrDefault(1) : w.Shape.ElementAtOrDefault(0);
            if (w.Shape.Length != 2 || (isA ? w.Shape[0] : w.Shape[1]) != fixedDim)
                problems.Add($"'{name}' has shape [{string.Join(", ", w.Shape)}], the graph takes {(isA ? $"[{fixedDim}, r]" : $"[r, {fixedDim}]")}");
            string module = name[..name.LastIndexOf(".lora_", StringComparison.Ordinal)];
            if (ranks.TryGetValue(module, out long r) && r != rank) problems.Add($"{module}: A has rank {(isA ? rank : r)}, B {(isA ? r : rank)}");
            ranks[module] = rank;
        }
        if (problems.Count > 0)
            throw new ArgumentException("The adapter does not fit the decoder graph: " + string.Join("; ", problems.Take(10)) +
                                        (problems.Count > 10 ? $"; and {problems.Count - 10} more" : "") + ".");
        IDisposable? oldOwner;
        Interlocked.Increment(ref _swapsWaiting);
        try
        {
            lock (Gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                oldOwner = _adapterOwner;
                (_adapter, _adapterOwner) = ([.. factors.Values], owner);
                if (version is { } v) Version = v;
            }
        }
        finally { Interlocked.Decrement(ref _swapsWaiting); }
        oldOwner?.Dispose();
        return sw.Elapsed;
    }

    /// <summary>Frees the session and the weight memory handed over.</summary>
    public override void Dispose()
    {
        lock (Gate)
        {
            if (_disposed) return;
            _disposed = true;
            _session.Dispose();
            _sessionOptions.Dispose();
            foreach (var v in _weightValues) v.Dispose();
            _weightOwner?.Dispose();
            _adapterOwner?.Dispose();
            _run.Dispose();
        }
    }
}

/// <summary>The outputs of one <see cref="RolloutEngine.Forward"/>: logits [B, S, V] and the presents, in ORT memory until disposed.</summary>
public sealed class DecoderStep : IDisposable
{
    readonly OrtValue[] _outputs;   // logits, then present key/value per layer (the order of the next step's past)

    internal DecoderStep(DecoderSignature signature, OrtValue[] outputs)
    {
        Signature = signature;
        _outputs = outputs;
    }

    /// <summary>The graph's I/O names.</summary>
    public DecoderSignature Signature { get; }

    /// <summary>present key, value of every layer, in layer order.</summary>
    internal OrtValue[] Presents => _outputs[1..];

    /// <summary>Shape of the logits [B, S, V].</summary>
    public long[] LogitsShape => _outputs[0].GetTensorTypeAndShape().Shape;

    /// <summary>Logits of row <paramref name="b"/> at position <paramref name="s"/> [V].</summary>
    public float[] LogitsAt(int b, int s)
    {
        var shape = LogitsShape;
        int seq = (int)shape[1], v = (int)shape[2];
        return _outputs[0].GetTensorDataAsSpan<float>().Slice((b * seq + s) * v, v).ToArray();
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var o in _outputs) o.Dispose();
    }
}
