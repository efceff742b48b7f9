using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Serving;

/// <summary>
/// What a rollout replica serves: one engine, its tokenizer and chat template, its name, and a batcher. Calls that
/// cannot start at once wait in a bounded queue; a full queue refuses a call with <see cref="QueueFullException"/>
/// (HTTP 429 with Retry-After, gRPC RESOURCE_EXHAUSTED). Two batchers (<see cref="Batching"/>):
/// <list type="bullet">
/// <item><b>Continuous</b> (an engine with <see cref="IContinuousBatching"/>, ours): one batch runs while any row is
/// live; at every decode step the waiting calls (in arrival order, while they fit in <c>maxBatch</c> rows) are prefilled
/// and join it, and a row that ends or whose call is cancelled frees its slot at once, so a short call's first token no
/// longer waits for the longest row of the batch. A call's rows join together; the call ends when all have.</item>
/// <item><b>Call boundary</b> (GenAI, remote engines, or <c>--batching call</c>): when the engine is free, every waiting
/// call (same required weights version, at most <c>maxBatch</c> sequences together) goes to it as one batch.</item>
/// </list>
/// Each request keeps its own seed, so its tokens are those it would get alone.
/// </summary>
public sealed class RolloutReplica(IRolloutService engine, TextTokenizer? tokenizer, string modelName, string engineName, int maxBatch,
    ChatTemplate? chat = null, string? chatProblem = null, int maxQueued = 1024, BatchingMode batching = BatchingMode.Continuous) : IDisposable
{
    sealed record Pending(IReadOnlyList<RolloutRequest> Requests, RolloutCall Call, CancellationToken Cancel, TaskCompletionSource<IReadOnlyList<RolloutResult>> Done)
    {
        /// <summary>When the call arrived (Stopwatch timestamp).</summary>
        public long Arrived { get; } = System.Diagnostics.Stopwatch.GetTimestamp();
    }

    readonly Lock _lock = new();
    readonly List<Pending> _waiting = [];
    int _queuedSequences, _calls;
    bool _running;

    /// <summary>The engine.</summary>
    public IRolloutService Engine => engine;
    /// <summary>The tokenizer (null: token ids only).</summary>
    public TextTokenizer? Tokenizer => tokenizer;
    /// <summary>The folder's chat template (null: none, or one that cannot be rendered, see <see cref="ChatProblem"/>); the replica disposes it.</summary>
    public ChatTemplate? Chat => chat;
    /// <summary>Why the folder's chat template cannot be used (null: fine or absent).</summary>
    public string? ChatProblem => chatProblem;
    /// <summary>The model id clients name (<c>GET /v1/models</c>).</summary>
    public string ModelName => modelName;
    /// <summary><c>ort</c> or <c>genai</c>.</summary>
    public string EngineName => engineName;
    /// <summary>Most sequences per request (and per engine batch).</summary>
    public int MaxBatch => maxBatch;
    /// <summary>Most sequences waiting for the engine; a call that would pass it gets <see cref="QueueFullException"/> (one call always gets into an empty queue).</summary>
    public int MaxQueued => maxQueued;
    /// <summary>The batcher in use: continuous when asked for and the engine can (<see cref="IContinuousBatching"/>), else call boundary.</summary>
    public BatchingMode Batching { get; } = batching == BatchingMode.Continuous && engine is IContinuousBatching ? BatchingMode.Continuous : BatchingMode.CallBoundary;
    /// <summary>Generate calls waiting or running.</summary>
    public int Queued => Volatile.Read(ref _calls);
    /// <summary>Sequences waiting for the engine (not those it runs).</summary>
    public int QueuedSequences { get { lock (_lock) return _queuedSequences; } }

    /// <summary>Generates, batched with whatever other calls wait when the engine frees up.</summary>
    public async Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall call, CancellationToken cancellationToken)
    {
        if (requests.Count == 0) throw new ArgumentException("The request holds no prompts.");
        if (requests.Count > maxBatch)
            throw new ArgumentException($"The request asks for {requests.Count} sequences; this replica takes at most {maxBatch} per request (--max-batch). Split it.");
        var pending = new Pending(requests, call, cancellationToken, new TaskCompletionSource<IReadOnlyList<RolloutResult>>(TaskCreationOptions.RunContinuationsAsynchronously));
        bool start;
        lock (_lock)
        {
            if (_queuedSequences > 0 && _queuedSequences + requests.Count > maxQueued)   // a call always gets into an empty queue
                throw new QueueFullException($"The replica's queue is full ({_queuedSequences} sequences wait; at most {maxQueued}); retry shortly.");
            _waiting.Add(pending);
            _queuedSequences += requests.Count;
            start = !_running;
            _running = true;
        }
        Interlocked.Increment(ref _calls);
        try
        {
            if (start)
                _ = Batching == BatchingMode.Continuous
                    ? Task.Factory.StartNew(ContinuousPump, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)
                    : Task.Run(Pump);
            using var withdraw = cancellationToken.Register(() => Withdraw(pending));
            return await pending.Done.Task;
        }
        finally { Interlocked.Decrement(ref _calls); }
    }

    /// <summary>A call cancelled while it waits leaves the queue (one the engine runs stops with its batch, see <see cref="RunBatch"/>).</summary>
    void Withdraw(Pending p)
    {
        lock (_lock)
        {
            if (!_waiting.Remove(p)) return;
            _queuedSequences -= p.Requests.Count;
        }
        p.Done.TrySetCanceled(p.Cancel);
    }

    /// <summary>Runs the engine's continuous batch (on its own thread) until no call waits or runs.</summary>
    void ContinuousPump()
    {
        var slots = (IContinuousBatching)engine;
        while (true)
        {
            try { slots.RunContinuous(Admit, maxBatch); }
            catch (Exception) { }   // the engine failed the calls it held; the waiting ones get a fresh batch
            lock (_lock)
            {
                if (_waiting.Count == 0) { _running = false; return; }
            }
        }
    }

    /// <summary>
    /// At a decode-step boundary: the waiting calls, in arrival order, while their rows fit in <paramref name="free"/>
    /// slots, as <see cref="BatchCall"/>s whose callbacks complete each call (a deadline that fires is a
    /// <see cref="TimeoutException"/>, as the engines' own calls report it).
    /// </summary>
    IReadOnlyList<BatchCall> Admit(int free)
    {
        List<Pending> taken = [];
        lock (_lock)
        {
            int rows = 0;
            while (_waiting.Count > 0 && rows + _waiting[0].Requests.Count <= free)
            {
                rows += _waiting[0].Requests.Count;
                taken.Add(_waiting[0]);
                _waiting.RemoveAt(0);
            }
            _queuedSequences -= rows;
            if (rows > 0) ServeMetrics.Batched(rows);
        }
        return [.. taken.Select(Join)];
    }

    /// <summary>The <see cref="BatchCall"/> of <paramref name="p"/>: rows collected in order, the call completed when the last ends or any fails.</summary>
    static BatchCall Join(Pending p)
    {
        var deadline = CancellationTokenSource.CreateLinkedTokenSource(p.Cancel);
        deadline.CancelAfter(p.Call.Timeout);
        var results = new RolloutResult[p.Requests.Count];
        int left = p.Requests.Count;
        void Done(int k, RolloutResult r)
        {
            results[k] = r;
            if (Interlocked.Decrement(ref left) != 0) return;
            deadline.Dispose();
            ServeMetrics.Generated(results, System.Diagnostics.Stopwatch.GetElapsedTime(p.Arrived), batch: false);
            p.Done.TrySetResult(results);
        }
        void Failed(Exception e)
        {
            if (e is OperationCanceledException && p.Cancel.IsCancellationRequested) p.Done.TrySetCanceled(p.Cancel);
            else if (e is OperationCanceledException) p.Done.TrySetException(new TimeoutException($"Generate missed its deadline of {p.Call.Timeout.TotalSeconds:0.###} s."));
            else p.Done.TrySetException(e);
            deadline.Dispose();
        }
        return new BatchCall(p.Requests, p.Call.RequiredVersion, deadline.Token, p.Call.OnToken, Done, Failed);
    }

    /// <summary>Runs batches of waiting calls until none waits.</summary>
    async Task Pump()
    {
        while (true)
        {
            List<Pending> batch = [];
            lock (_lock)
            {
                if (_waiting.Count == 0) { _running = false; return; }
                ulong? version = _waiting[0].Call.RequiredVersion;
                int sequences = 0;
                foreach (var p in _waiting.ToList())
                {
                    if (p.Call.RequiredVersion != version || sequences + p.Requests.Count > maxBatch) continue;
                    batch.Add(p);
                    sequences += p.Requests.Count;
                    _waiting.Remove(p);
                }
                _queuedSequences -= sequences;
            }
            await RunBatch(batch);
        }
    }

    /// <summary>
    /// One engine call for <paramref name="batch"/>: the calls' requests in order, tokens routed back to each call's
    /// <see cref="RolloutCall.OnToken"/>, the shortest deadline. The engine call stops when every member is cancelled. A
    /// merged call that the engine refuses (one member's bad request) is retried member by member, so only that member fails.
    /// </summary>
    async Task RunBatch(List<Pending> batch)
    {
        var offsets = new int[batch.Count];
        for (int i = 1; i < batch.Count; i++) offsets[i] = offsets[i - 1] + batch[i - 1].Requests.Count;
        int Member(int row) { int m = Array.BinarySearch(offsets, row); return m >= 0 ? m : ~m - 1; }
        using var allCancelled = new CancellationTokenSource();
        int live = batch.Count;
        var registrations = batch.Select(p => p.Cancel.Register(() => { if (Interlocked.Decrement(ref live) == 0) allCancelled.Cancel(); })).ToList();
        var call = new RolloutCall
        {
            RequiredVersion = batch[0].Call.RequiredVersion,
            Timeout = batch.Min(p => p.Call.Timeout),
            OnToken = batch.Any(p => p.Call.OnToken is not null)
                ? e => { int m = Member(e.Request); batch[m].Call.OnToken?.Invoke(e with { Request = e.Request - offsets[m] }); }
                : null,
        };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            var results = await engine.GenerateAsync([.. batch.SelectMany(p => p.Requests)], call, allCancelled.Token);
            ServeMetrics.Generated(results, clock.Elapsed);
            for (int m = 0; m < batch.Count; m++)
                if (batch[m].Cancel.IsCancellationRequested) batch[m].Done.TrySetCanceled(batch[m].Cancel);
                else batch[m].Done.TrySetResult([.. results.Skip(offsets[m]).Take(batch[m].Requests.Count)]);
        }
        catch (ArgumentException) when (batch.Count > 1)
        {
            foreach (var p in batch) await RunBatch([p]);
        }
        catch (OperationCanceledException) when (allCancelled.IsCancellationRequested)
        {
            foreach (var p in batch) p.Done.TrySetCanceled(p.Cancel);
        }
        catch (Exception e)
        {
            foreach (var p in batch) p.Done.TrySetException(e);
        }
        finally
        {
            foreach (var r in registrations) r.Dispose();
        }
    }

    /// <summary>Frees the engine.</summary>
    public void Dispose()
    {
        engine.Dispose();
        chat?.Dispose();
    }
}

/// <summary>How a rollout replica batches concurrent calls (<c>serve rollout --batching</c>).</summary>
public enum BatchingMode
{
    /// <summary>Calls join the running batch at the next decode step and leave it as they end (needs our engine).</summary>
    Continuous,
    /// <summary>Calls that wait while a batch runs go to the engine together when it ends.</summary>
    CallBoundary,
}

/// <summary>The replica's queue is full: retry shortly (HTTP 429 with Retry-After, gRPC RESOURCE_EXHAUSTED).</summary>
public sealed class QueueFullException(string message) : Exception(message);

/// <summary>What a reward replica serves.</summary>
public sealed class RewardReplica(IRewardService scorer, string modelName, int maxBatch) : IDisposable
{
    readonly SemaphoreSlim _gate = new(1, 1);

    /// <summary>The model id.</summary>
    public string ModelName => modelName;

    /// <summary>Scores (prompt, response) pairs, one call at a time.</summary>
    public async Task<float[]> ScoreAsync(IReadOnlyList<RewardRequest> requests, CancellationToken cancellationToken)
    {
        if (requests.Count == 0) throw new ArgumentException("The request holds no texts to score.");
        if (requests.Count > maxBatch)
            throw new ArgumentException($"The request holds {requests.Count} texts; this replica takes at most {maxBatch} per request (--max-batch). Split it.");
        await _gate.WaitAsync(cancellationToken);
        try
        {
            var scores = await Task.Run(() => scorer.Score(requests), cancellationToken);
            ServeMetrics.ScoredTexts(scores.Length);
            return scores;
        }
        finally { _gate.Release(); }
    }

    /// <summary>Frees the model.</summary>
    public void Dispose() => scorer.Dispose();
}
