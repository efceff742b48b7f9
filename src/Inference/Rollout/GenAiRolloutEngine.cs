using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntimeGenAI;
using Rlhf.Inference.Onnx;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Rollout;

/// <summary>Settings of <see cref="GenAiRolloutEngine"/>.</summary>
public sealed record GenAiEngineOptions
{
    /// <summary>ONNX Runtime intra-op threads of GenAI's session; 0 = all cores.</summary>
    public int Threads { get; init; }
    /// <summary>Most rows per generator (GenAI's compile-time limit is <see cref="GenAiRolloutEngine.MaxGeneratorBatch"/>).</summary>
    public int MaxBatchSize { get; init; } = GenAiRolloutEngine.MaxGeneratorBatch;
}

/// <summary>
/// Rollouts on ONNX Runtime GenAI (<c>Microsoft.ML.OnnxRuntimeGenAI</c>) over an exported GenAI folder, behind the same
/// contract as our <see cref="RolloutEngine"/>:
/// <list type="bullet">
/// <item>Requests are grouped by sampling settings (temperature, top-k, top-p: one generator has one of each) and cut into chunks of at most <see cref="GenAiEngineOptions.MaxBatchSize"/> (≤ 32) rows; prompts are
/// right-padded with genai_config.json's <c>pad_token_id</c> (GenAI derives masks and positions from it), prompt ids are
/// used as given (text prompts get BOS + prompt, <see cref="PromptFormat.PromptIds"/>; GenAI's own tokenizer adds no BOS).</item>
/// <item>Logprobs: GenAI returns none, so after each step the logits that chose the token (<c>GetOutput("logits")</c>:
/// [B, P, V] after the prefill, read at each row's last prompt token; [B, 1, V] after) go through
/// <see cref="TokenSampler.LogProb"/>: log softmax(logits / T)[token] over the full vocabulary, the convention of our
/// engine and of the trainer. A repetition penalty is refused: with one, the logits GenAI hands back are no longer the
/// model's (its CPU search keeps a view of the logits buffer and penalises it in place; measured: tokens equal to our
/// engine's, logprobs off by ~6e-3), so the convention could not be kept.</item>
/// <item>Per-row max_new_tokens, EOS and stop strings are applied here (GenAI runs the batch to the longest limit; a
/// finished row's later tokens are discarded).</item>
/// <item>Seeds: one generator has one <c>random_seed</c>, derived from the chunk's request seeds in order
/// (<see cref="ChunkSeed"/>). The same requests in the same order give the same tokens, but a row's tokens depend on
/// the other rows of its chunk (our engine gives each request its own stream, so its tokens depend on its seed alone).
/// Greedy decoding is independent of batching on both.</item>
/// <item>Weights: a folder exported with weights as initializers runs as is; one exported with
/// <c>--weights inputs</c> takes every weight as a required graph input, fed to each generator from the buffers of the
/// last <see cref="UpdateWeights"/> (<c>Generator.SetModelInput</c> over the caller's memory: no copy, no new session).</item>
/// </list>
/// Calls are serialised; a weight update is swapped in between generate calls (one call's results come from one weights version).
/// </summary>
public sealed class GenAiRolloutEngine : LocalRolloutEngine
{
    /// <summary>GenAI's largest batch per generator.</summary>
    public const int MaxGeneratorBatch = 32;

    static readonly Lazy<bool> TelemetryOff = new(() => { Utils.DisableTelemetryEvents(); return true; });

    readonly Config _config;
    readonly Model _model;
    readonly GenAiEngineOptions _options;
    readonly Dictionary<string, long[]> _weightInputs;
    readonly Services.PolicyWeightFormat? _format;
    readonly int[] _eos;
    readonly int _pad;
    readonly int _vocab;
    readonly TokenSampler _sampler;
    List<(string Name, Tensor Tensor)>? _weights;
    List<GCHandle> _pins = [];
    IDisposable? _weightOwner;
    readonly int? _context;
    bool _disposed;

    GenAiRolloutEngine(string folder, string modelFile, GenAiEngineOptions options, TextTokenizer? tokenizer)
    {
        _ = TelemetryOff.Value;
        if (options.MaxBatchSize is < 1 or > MaxGeneratorBatch)
            throw new ArgumentException($"MaxBatchSize must be in [1, {MaxGeneratorBatch}] (GenAI's limit per generator); got {options.MaxBatchSize}.");
        _options = options;
        Tokenizer = tokenizer;
        var genai = GenAiConfigFile.Read(folder);
        _vocab = genai.VocabSize ?? throw new InvalidDataException($"{Path.Combine(folder, "genai_config.json")} has no model.vocab_size.");
        _context = genai.ContextLength;
        // GenAI ends a row at genai_config.json's eos_token_id (and pads it afterwards); an overlay adds to that list
        // rather than replacing it, so the folder's list is the one EOS set both sides use.
        _eos = genai.EosTokenIds;
        if (_eos.Length == 0)
            throw new InvalidDataException($"{Path.Combine(folder, "genai_config.json")} has no model.eos_token_id; GenAI needs one to end rows " +
                                           "(our engine, --engine ort, can run without one).");
        _pad = genai.PadTokenId ?? 0;
        _weightInputs = WeightInputs(modelFile);
        _format = Services.PolicyWeightFormat.FromMetadata(OnnxInitializers.ReadMetadata(modelFile));
        _config = new Config(folder);
        try
        {
            int threads = options.Threads > 0 ? options.Threads : Environment.ProcessorCount;
            // Worker threads sleep instead of spinning (spinning halved GenAI's speed on these 2-core machines).
            string t = threads.ToString(CultureInfo.InvariantCulture);
            _config.Overlay("{\"model\":{\"decoder\":{\"session_options\":{\"intra_op_num_threads\":" + t +
                            ",\"inter_op_num_threads\":1,\"session.intra_op.allow_spinning\":\"0\"}}}}");
            _model = new Model(_config);
        }
        catch
        {
            _config.Dispose();
            throw;
        }
        _sampler = new TokenSampler(_vocab);
    }

    /// <summary>The tokenizer used for text prompts, response text and stop strings (null: ids only).</summary>
    public TextTokenizer? Tokenizer { get; }

    /// <summary>Tokens that end a response: genai_config.json's <c>eos_token_id</c>.</summary>
    public IReadOnlyList<int> EosTokenIds => _eos;

    /// <summary>The id prompts are padded with (genai_config.json's <c>pad_token_id</c>).</summary>
    public int PadTokenId => _pad;

    /// <summary>True when the graph takes its weights as inputs (<c>rlhf export --weights inputs</c>).</summary>
    public bool WeightsAreInputs => _weightInputs.Count > 0;

    /// <summary>
    /// Opens the GenAI folder at <paramref name="folder"/> (genai_config.json + model.onnx). The tokenizer is loaded from
    /// the folder when it has tokenizer files and none is given.
    /// </summary>
    public static GenAiRolloutEngine Load(string folder, GenAiEngineOptions? options = null, TextTokenizer? tokenizer = null)
    {
        if (!Directory.Exists(folder) || !File.Exists(Path.Combine(folder, "genai_config.json")))
            throw new FileNotFoundException($"'{folder}' is not an ONNX Runtime GenAI folder (no genai_config.json); export one with `rlhf export --kind policy`.");
        var (file, dir) = OnnxModelPath.Resolve(folder);
        if (tokenizer is null)
        {
            try { tokenizer = TextTokenizer.Load(dir); }
            catch (FileNotFoundException) { tokenizer = null; }
        }
        return new GenAiRolloutEngine(dir, file, options ?? new GenAiEngineOptions(), tokenizer);
    }

    /// <summary>Graph inputs that are not decoder I/O (ids, mask, positions, KV cache): the weights of a <c>--weights inputs</c> graph.</summary>
    static Dictionary<string, long[]> WeightInputs(string modelFile)
    {
        var result = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (var (name, dims) in OnnxInitializers.ReadInputs(modelFile))
        {
            if (name is "input_ids" or "attention_mask" or "position_ids" || name.StartsWith("past_key_values.", StringComparison.Ordinal)) continue;
            if (dims.Any(d => d is null))
                throw new InvalidDataException($"{modelFile}: input '{name}' has a symbolic dimension; weight inputs need fixed shapes.");
            result[name] = [.. dims.Select(d => d!.Value)];
        }
        return result;
    }

    /// <summary>
    /// The generator seed of a chunk: SplitMix64 folded over the request seeds in order, kept to GenAI's non-negative
    /// 31-bit <c>random_seed</c>.
    /// </summary>
    public static int ChunkSeed(IEnumerable<ulong> seeds)
    {
        ulong x = 0x243F6A8885A308D3UL;
        foreach (ulong s in seeds)
        {
            x ^= s;
            Rng.SplitMix64(ref x);
        }
        ulong y = x;
        return (int)(Rng.SplitMix64(ref y) & 0x7FFFFFFF);
    }

    /// <inheritdoc/>
    public override IReadOnlyDictionary<string, long[]> WeightLayout => _weightInputs;

    /// <inheritdoc/>
    public override Services.PolicyWeightFormat? WeightFormat => _format;

    /// <summary>
    /// Generates a response for each request (in order), all with the weights version loaded when the call starts
    /// (<paramref name="requiredVersion"/>: that version or <see cref="Services.WeightsVersionMismatchException"/>).
    /// </summary>
    public override IReadOnlyList<RolloutResult> Generate(IReadOnlyList<RolloutRequest> requests, ulong? requiredVersion = null, CancellationToken cancellationToken = default,
        Action<SampledToken>? onToken = null)
    {
        var (prompts, sampling) = RolloutRows.Prepare(requests, Tokenizer, _vocab, _context,
            "A text prompt needs a tokenizer: put the tokenizer files in the GenAI folder or pass one to GenAiRolloutEngine.Load.");
        for (int i = 0; i < requests.Count; i++)
        {
            if (Array.IndexOf(prompts[i], _pad) >= 0)
                throw new ArgumentException($"Request {i}: the prompt contains the pad id {_pad}; GenAI reads that id as padding (genai_config.json pad_token_id), so it cannot be a prompt token.");
            if (sampling[i].RepetitionPenalty != 1f)
                throw new ArgumentException($"Request {i} asks for a repetition penalty ({sampling[i].RepetitionPenalty}): GenAI applies it in place to " +
                                            "the logits it hands back, so the logprobs could not follow the trainer's convention; " +
                                            "use --engine ort for a repetition penalty.");
        }
        var results = new RolloutResult[requests.Count];
        // One generator has one set of sampling settings: group by them, keep request order within a group.
        var groups = Enumerable.Range(0, requests.Count)
            .GroupBy(i => (sampling[i].Temperature, sampling[i].TopK, sampling[i].TopP));
        lock (Gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            CheckVersion(requiredVersion);
            foreach (var g in groups)
            {
                int[] rows = [.. g];
                for (int start = 0; start < rows.Length; start += _options.MaxBatchSize)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    int[] chunk = rows[start..Math.Min(rows.Length, start + _options.MaxBatchSize)];
                    var chunkResults = RunChunk([.. chunk.Select(i => prompts[i])], [.. chunk.Select(i => sampling[i])],
                        onToken is null ? null : e => onToken(e with { Request = chunk[e.Request] }));
                    for (int j = 0; j < chunk.Length; j++) results[chunk[j]] = chunkResults[j];
                }
            }
        }
        return results;
    }

    RolloutResult[] RunChunk(int[][] prompts, SamplingOptions[] sampling, Action<SampledToken>? onToken)
    {
        if (WeightsAreInputs && _weights is null)
            throw new InvalidOperationException("This GenAI folder's graph takes its weights as inputs (rlhf export --weights inputs): " +
                                                "call UpdateWeights with the policy's weights before generating.");
        int n = prompts.Length, V = _vocab;
        int P = prompts.Max(p => p.Length);
        int maxNew = sampling.Max(s => s.MaxNewTokens);
        var o = sampling[0];
        var sw = Stopwatch.StartNew();

        using var gp = new GeneratorParams(_model);
        gp.SetSearchOption("batch_size", n);
        gp.SetSearchOption("max_length", P + maxNew);
        gp.SetSearchOption("min_length", 0);
        gp.SetSearchOption("num_beams", 1);
        if (o.IsGreedy) gp.SetSearchOption("do_sample", false);
        else
        {
            gp.SetSearchOption("do_sample", true);
            gp.SetSearchOption("temperature", o.Temperature);
            gp.SetSearchOption("top_k", o.TopK >= V ? 0 : o.TopK);
            gp.SetSearchOption("top_p", o.TopP);
            gp.SetSearchOption("random_seed", ChunkSeed(sampling.Select(s => s.Seed)));
        }
        using var generator = new Generator(_model, gp);
        if (_weights is not null)
            foreach (var (name, tensor) in _weights) generator.SetModelInput(name, tensor);

        var flat = new int[n * P];
        for (int r = 0; r < n; r++)
            for (int j = 0; j < P; j++) flat[r * P + j] = j < prompts[r].Length ? prompts[r][j] : _pad;
        generator.AppendTokens(flat);
        double prefillMs = sw.Elapsed.TotalMilliseconds;

        var stops = sampling.Select(s => s.StopStrings.Count > 0 ? new StopStringMatcher(s.StopStrings) : null).ToArray();
        var history = new int[n][];
        var logps = new float[n][];
        var generated = new int[n];
        var reason = new RolloutFinishReason?[n];
        var stopAt = new int[n];
        var textLen = new int[n];
        for (int r = 0; r < n; r++)
        {
            history[r] = new int[prompts[r].Length + sampling[r].MaxNewTokens];
            prompts[r].CopyTo(history[r], 0);
            logps[r] = new float[sampling[r].MaxNewTokens];
            stopAt[r] = -1;
        }
        int live = n;
        for (int step = 0; step < maxNew && live > 0 && !generator.IsDone(); step++)
        {
            generator.GenerateNextToken();
            var next = generator.GetNextTokens();
            using var logits = generator.GetOutput("logits");
            var all = logits.GetData<float>();
            long[] shape = logits.Shape();
            int S = (int)shape[1];
            if (shape.Length != 3 || shape[0] != n || shape[2] != V)
                throw new InvalidDataException($"GenAI returned logits of shape [{string.Join(", ", shape)}]; expected [{n}, S, {V}].");
            for (int r = 0; r < n; r++)
            {
                if (reason[r] is not null) continue;
                int at = S == 1 ? 0 : prompts[r].Length - 1;   // prefill: the row's last prompt token (right padding)
                var row = all.Slice((r * S + at) * V, V);
                int prevLen = prompts[r].Length + generated[r];
                int token = next[r];
                logps[r][generated[r]] = _sampler.LogProb(row, history[r].AsSpan(0, prevLen), sampling[r], token);
                history[r][prevLen] = token;
                generated[r]++;
                onToken?.Invoke(new SampledToken(r, token, logps[r][generated[r] - 1], null));
                if (Array.IndexOf(_eos, token) >= 0) reason[r] = RolloutFinishReason.Eos;
                else if (stops[r] is { } m && RolloutRows.CheckStop(Tokenizer!, m, history[r].AsSpan(prompts[r].Length, generated[r]), ref textLen[r], ref stopAt[r]))
                    reason[r] = RolloutFinishReason.StopString;
                else if (generated[r] >= sampling[r].MaxNewTokens) reason[r] = RolloutFinishReason.Length;
                if (reason[r] is not null) live--;
            }
        }
        double totalMs = sw.Elapsed.TotalMilliseconds;
        var timings = new RolloutTimings(prefillMs, totalMs - prefillMs, n, generated.Sum());
        var results = new RolloutResult[n];
        for (int r = 0; r < n; r++)
        {
            int[] resp = history[r].AsSpan(prompts[r].Length, generated[r]).ToArray();
            string? text = RolloutRows.Text(Tokenizer, resp, reason[r], stopAt[r]);
            results[r] = new RolloutResult(prompts[r], resp, text, logps[r].AsSpan(0, generated[r]).ToArray(),
                reason[r] ?? RolloutFinishReason.Length, timings, Version);
        }
        return results;
    }

    /// <summary>
    /// Replaces the policy weights of a <c>--weights inputs</c> graph: every weight input must be given (initializer
    /// layout: name, shape as stored), float32. The buffers are wrapped without copying and fed to each later generator;
    /// <paramref name="owner"/> keeps their memory alive and is disposed at the next update or on disposal (managed
    /// arrays are pinned until then). <paramref name="version"/> becomes <see cref="WeightsVersion"/> (null: unchanged).
    /// Returns the time taken.
    /// </summary>
    public override TimeSpan UpdateWeights(IReadOnlyDictionary<string, WeightBuffer> weights, IDisposable? owner = null, ulong? version = null)
    {
        ArgumentNullException.ThrowIfNull(weights);
        var sw = Stopwatch.StartNew();
        if (!WeightsAreInputs)
            throw new InvalidOperationException("This GenAI folder keeps its weights as initializers; export it with `rlhf export --weights inputs` " +
                                                "to update weights in memory (the --engine genai rollouts of PPO do so).");
        var problems = new List<string>();
        foreach (string name in _weightInputs.Keys)
            if (!weights.ContainsKey(name)) problems.Add($"'{name}' is missing");
        foreach (var (name, w) in weights)
        {
            if (!_weightInputs.TryGetValue(name, out var dims)) problems.Add($"'{name}' is not a weight input of the graph");
            else if (!dims.SequenceEqual(w.Shape))
                problems.Add($"'{name}' has shape [{string.Join(", ", w.Shape)}], the graph takes [{string.Join(", ", dims)}]");
        }
        if (problems.Count > 0)
            throw new ArgumentException("Weights do not fit the GenAI graph: " + string.Join("; ", problems.Take(10)) +
                                        (problems.Count > 10 ? $"; and {problems.Count - 10} more" : "") + ".");
        var tensors = new List<(string, Tensor)>(weights.Count);
        var pins = new List<GCHandle>();
        try
        {
            foreach (var (name, w) in weights)
            {
                w.Validate();
                if (w.Name != name) throw new ArgumentException($"Weight key '{name}' names a buffer called '{w.Name}'.");
                nint ptr = w.Pointer;
                if (w.Array is not null)
                {
                    var h = GCHandle.Alloc(w.Array, GCHandleType.Pinned);
                    pins.Add(h);
                    ptr = h.AddrOfPinnedObject();
                }
                tensors.Add((name, new Tensor(ptr, w.Shape, ElementType.float32)));
            }
        }
        catch
        {
            foreach (var (_, t) in tensors) t.Dispose();
            foreach (var h in pins) h.Free();
            throw;
        }
        List<(string Name, Tensor Tensor)>? oldTensors;
        List<GCHandle> oldPins;
        IDisposable? oldOwner;
        lock (Gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            (oldTensors, oldPins, oldOwner) = (_weights, _pins, _weightOwner);
            (_weights, _pins, _weightOwner) = (tensors, pins, owner);
            if (version is { } v) Version = v;
        }
        Release(oldTensors, oldPins, oldOwner);
        return sw.Elapsed;
    }

    static void Release(List<(string Name, Tensor Tensor)>? tensors, List<GCHandle> pins, IDisposable? owner)
    {
        if (tensors is not null) foreach (var (_, t) in tensors) t.Dispose();
        foreach (var h in pins) h.Free();
        owner?.Dispose();
    }

    /// <summary>Frees the model and the weight memory handed over.</summary>
    public override void Dispose()
    {
        lock (Gate)
        {
            if (_disposed) return;
            _disposed = true;
            _model.Dispose();
            _config.Dispose();
            Release(_weights, _pins, _weightOwner);
            _weights = null;
            _pins = [];
            _weightOwner = null;
        }
    }
}
