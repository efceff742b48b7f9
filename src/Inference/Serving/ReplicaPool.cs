using System.Collections.Concurrent;
using System.Diagnostics;
using Grpc.Core;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;

namespace Rlhf.Inference.Serving;

/// <summary>
/// Several rollout replicas behind one <see cref="IRolloutService"/>. A generate call is cut into fixed shards of
/// <see cref="ShardSize"/> requests spread over the live replicas (each replica works one shard at a time); a shard whose
/// replica fails or misses its deadline is re-sent to another replica, and that replica leaves the pool. A weight push
/// goes to every live replica; the pool keeps the last message, and a replica that answers again (restarted, behind, or
/// new) is brought to the current version before it gets work. <c>dns:///name:port</c> targets are resolved again on
/// every call, so replicas that appear or vanish behind a name join or leave. Every call has a deadline.
/// </summary>
/// <remarks>
/// What the pool does is traced on <see cref="Trace"/> (OpenTelemetry-compatible activities): <c>rollout.generate</c>
/// per call, <c>rollout.shard</c> per attempt of a shard on a replica (re-sends have <c>rlhf.attempt</c> &gt; 1),
/// <c>rollout.push</c> per weight push to a replica, <c>rollout.rejoin</c> per replica brought back.
/// </remarks>
public sealed class ReplicaPool : IRolloutService
{
    /// <summary>The pool's activities (source name <c>Rlhf.Inference.ReplicaPool</c>).</summary>
    public static readonly ActivitySource Trace = new("Rlhf.Inference.ReplicaPool");

    sealed class Member(RemoteRollouts client, bool live)
    {
        public RemoteRollouts Client = client;
        public bool Live = live;
    }

    static readonly TimeSpan StatusTimeout = TimeSpan.FromSeconds(5);
    readonly ReplicaTarget[] _targets;
    readonly IReadOnlyList<string>[] _resolved;
    readonly Func<ReplicaTarget, CancellationToken, Task<IReadOnlyList<string>>> _resolve;
    readonly List<Member> _members = [];
    readonly object _gate = new();
    readonly SemaphoreSlim _calls = new(1, 1);
    readonly TextWriter _log;
    readonly string? _token;
    PolicyWeights? _current;
    ulong _version;

    /// <summary>
    /// Opens a pool over <paramref name="targets"/> (<c>http://127.0.0.1:7001</c>, ..., or <c>dns:///name:port</c>). Fixed
    /// addresses start in the pool; names are resolved at the first call.
    /// </summary>
    public ReplicaPool(IReadOnlyList<string> targets, string? token, int shardSize, TimeSpan callTimeout, TextWriter? log = null)
        : this(targets, token, shardSize, callTimeout, log, resolve: null) { }

    /// <summary>As the public constructor, with the name resolution given (tests stand in for DNS answers that change).</summary>
    internal ReplicaPool(IReadOnlyList<string> targets, string? token, int shardSize, TimeSpan callTimeout, TextWriter? log,
        Func<ReplicaTarget, CancellationToken, Task<IReadOnlyList<string>>>? resolve)
    {
        _resolve = resolve ?? ((t, ct) => t.ResolveAsync(ct));
        if (targets.Count == 0) throw new ArgumentException("A replica pool needs at least one address.");
        if (shardSize < 1) throw new ArgumentException($"The shard size must be >= 1; got {shardSize}.");
        if (callTimeout <= TimeSpan.Zero) throw new ArgumentException($"The call deadline must be positive; got {callTimeout}.");
        _targets = [.. targets.Select(ReplicaTarget.Parse)];
        _resolved = [.. _targets.Select(t => t.Address is { } a ? [a] : (IReadOnlyList<string>)[])];
        _token = token;
        foreach (string a in _resolved.SelectMany(r => r).Distinct(StringComparer.Ordinal))
            _members.Add(new Member(new RemoteRollouts(a, token, StatusTimeout), live: true));
        ShardSize = shardSize;
        CallTimeout = callTimeout;
        _log = log ?? Console.Error;
    }

    /// <summary>Requests per shard.</summary>
    public int ShardSize { get; }

    /// <summary>Deadline of each shard and each push.</summary>
    public TimeSpan CallTimeout { get; }

    /// <summary>Addresses of the replicas now in the pool.</summary>
    public IReadOnlyList<string> LiveReplicas { get { lock (_gate) return [.. _members.Where(m => m.Live).Select(m => m.Client.Address)]; } }

    /// <summary>Addresses the pool knows (live or not), after the last resolution.</summary>
    public IReadOnlyList<string> KnownReplicas { get { lock (_gate) return [.. _members.Select(m => m.Client.Address)]; } }

    /// <inheritdoc/>
    public ulong WeightsVersion { get { lock (_gate) return _version; } }

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, long[]> WeightLayout => FirstAnswer(c => c.WeightLayout);

    /// <inheritdoc/>
    public PolicyWeightFormat? WeightFormat => FirstAnswer(c => c.WeightFormat);

    /// <summary>What the first replica that answers says (the replicas serve one model).</summary>
    T FirstAnswer<T>(Func<RemoteRollouts, T> ask)
    {
        if (Snapshot().Length == 0) Refresh(CancellationToken.None).GetAwaiter().GetResult();
        var errors = new List<string>();
        foreach (var m in Snapshot())
        {
            try { return ask(m.Client); }
            catch (RpcException e) { errors.Add($"{m.Client.Address}: {e.Status.Detail}"); }
        }
        throw new InvalidOperationException($"No rollout replica answers ({Targets}): " + string.Join("; ", errors));
    }

    /// <summary>The targets as given, comma-separated (the <c>rlhf.pool</c> tag of the pool's activities).</summary>
    public string Targets => string.Join(",", _targets.Select(t => t.Text));

    Member[] Snapshot() { lock (_gate) return [.. _members]; }

    /// <inheritdoc/>
    public async Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        var sw = Stopwatch.StartNew();
        await _calls.WaitAsync(cancellationToken);
        try
        {
            lock (_gate)
            {
                _current?.Dispose();
                (_current, _version) = (weights, weights.Version);
            }
            await Refresh(cancellationToken);
            Member[] targets = [.. Snapshot().Where(m => m.Live)];
            await Task.WhenAll(targets.Select(m => Send(m, weights, timeout ?? CallTimeout, cancellationToken)));
            await Rejoin(cancellationToken);
            if (LiveReplicas.Count == 0)
                throw new InvalidOperationException($"No rollout replica took weights version {weights.Version} ({Targets}); start them or fix the addresses.");
            return sw.Elapsed;
        }
        finally { _calls.Release(); }
    }

    async Task Send(Member m, PolicyWeights weights, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var activity = Start("rollout.push", ("rlhf.replica", m.Client.Address), ("rlhf.weights_version", weights.Version),
            ("rlhf.bytes", weights.Manifest.Sum(t => t.ByteLength)));
        try
        {
            await m.Client.SendWeightsAsync(weights, timeout, cancellationToken);
        }
        catch (Exception e) when (IsReplicaFailure(e, cancellationToken))
        {
            activity?.SetStatus(ActivityStatusCode.Error, Describe(e));
            Drop(m, $"push of version {weights.Version} failed: {Describe(e)}");
        }
    }

    /// <inheritdoc/>
    public async Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
    {
        call ??= new RolloutCall { Timeout = CallTimeout };
        await _calls.WaitAsync(cancellationToken);
        try
        {
            await Refresh(cancellationToken);
            await Rejoin(cancellationToken);
            var shards = requests.Chunk(ShardSize).ToArray();
            using var activity = Start("rollout.generate", ("rlhf.requests", requests.Count), ("rlhf.shards", shards.Length),
                ("rlhf.required_version", call.RequiredVersion));
            var results = new IReadOnlyList<RolloutResult>?[shards.Length];
            var queue = new ConcurrentQueue<int>(Enumerable.Range(0, shards.Length));
            var attempts = new int[shards.Length];
            int members = Snapshot().Length;
            // Rounds: every live replica drains the queue; a failed shard goes back to it for the replicas still live.
            while (!queue.IsEmpty)
            {
                Member[] workers = [.. Snapshot().Where(m => m.Live)];
                if (workers.Length == 0) throw new InvalidOperationException($"No rollout replica is live ({Targets}).");
                await Task.WhenAll(workers.Select(Work));
            }

            async Task Work(Member m)
            {
                while (queue.TryDequeue(out int s))
                {
                    int attempt = Interlocked.Increment(ref attempts[s]);
                    using var shard = Start("rollout.shard", ("rlhf.replica", m.Client.Address), ("rlhf.shard", s), ("rlhf.first_request", s * ShardSize),
                        ("rlhf.requests", shards[s].Length), ("rlhf.attempt", attempt), ("rlhf.required_version", call.RequiredVersion));
                    try
                    {
                        var answer = await m.Client.GenerateAsync(shards[s], call, cancellationToken);
                        shard?.SetTag("rlhf.weights_version", answer[0].WeightsVersion);
                        results[s] = answer;
                    }
                    catch (Exception e) when (IsReplicaFailure(e, cancellationToken))
                    {
                        shard?.SetStatus(ActivityStatusCode.Error, Describe(e));
                        Drop(m, $"shard {s} failed: {Describe(e)}; re-sending it");
                        if (attempt >= members)
                            throw new InvalidOperationException($"Shard {s} failed on {attempt} replicas; giving up.", e);
                        queue.Enqueue(s);
                        return;
                    }
                }
            }
            int missing = Array.FindIndex(results, r => r is null);
            if (missing >= 0) throw new InvalidOperationException($"Every rollout replica failed; shard {missing} has no answer ({Targets}).");
            return [.. results.SelectMany(r => r!)];
        }
        finally { _calls.Release(); }
    }

    /// <summary>
    /// Resolves the <c>dns:///</c> targets again: addresses that appeared join as not yet live (<see cref="Rejoin"/> brings
    /// them in), addresses gone from every target leave. A name that fails to resolve keeps its last addresses.
    /// </summary>
    async Task Refresh(CancellationToken cancellationToken)
    {
        if (_targets.All(t => t.Address is not null)) return;
        for (int i = 0; i < _targets.Length; i++)
        {
            if (_targets[i].Address is not null) continue;
            try { _resolved[i] = await _resolve(_targets[i], cancellationToken); }
            catch (System.Net.Sockets.SocketException e) { _log.WriteLine($"replica name {_targets[i].Text} did not resolve ({e.Message}); keeping its last {_resolved[i].Count} address(es)."); }
        }
        var wanted = _resolved.SelectMany(r => r).Distinct(StringComparer.Ordinal).ToList();
        lock (_gate)
        {
            foreach (var gone in _members.Where(m => !wanted.Contains(m.Client.Address, StringComparer.Ordinal)).ToList())
            {
                _members.Remove(gone);
                gone.Client.Dispose();
                _log.WriteLine($"replica {gone.Client.Address} left the pool: its name no longer resolves to it.");
            }
            foreach (string a in wanted.Where(a => !_members.Any(m => m.Client.Address == a)))
                _members.Add(new Member(new RemoteRollouts(a, _token, StatusTimeout), live: false));
        }
    }

    /// <summary>
    /// Brings in replicas that are out of the pool but answer, after pushing them the current weights (a restarted
    /// replica's version 0 is its folder's weights, not the trainer's). Before any push, a replica joins only at version 0.
    /// </summary>
    async Task Rejoin(CancellationToken cancellationToken)
    {
        foreach (var m in Snapshot().Where(m => !m.Live))
        {
            // A fresh channel: the old one may hold its failed connection in back-off.
            var old = m.Client;
            m.Client = new RemoteRollouts(old.Address, _token, StatusTimeout);
            old.Dispose();
            using var activity = Start("rollout.rejoin", ("rlhf.replica", m.Client.Address));
            try
            {
                var status = await m.Client.StatusAsync(cancellationToken);
                PolicyWeights? current;
                ulong version;
                lock (_gate) (current, version) = (_current, _version);
                activity?.SetTag("rlhf.replica_version", status.WeightsVersion);
                activity?.SetTag("rlhf.weights_version", version);
                if (current is not null) await m.Client.SendWeightsAsync(current, CallTimeout, cancellationToken);
                else if (status.WeightsVersion != version) { activity?.SetStatus(ActivityStatusCode.Error, "no weights to catch up with"); continue; }
                lock (_gate) m.Live = true;
                _log.WriteLine($"replica {m.Client.Address} joined the pool at weights version {version}.");
            }
            catch (Exception e) when (IsReplicaFailure(e, cancellationToken))
            {
                activity?.SetStatus(ActivityStatusCode.Error, Describe(e));
            }
        }
    }

    /// <summary>An activity whose tags (<c>rlhf.pool</c>: the pool's targets, then <paramref name="tags"/> that are not null) are set before listeners hear of its start.</summary>
    Activity? Start(string name, params (string Key, object? Value)[] tags) =>
        Trace.StartActivity(name, ActivityKind.Client, default(ActivityContext),
            [new("rlhf.pool", Targets), .. tags.Where(t => t.Value is not null).Select(t => new KeyValuePair<string, object?>(t.Key, t.Value))]);

    void Drop(Member m, string why)
    {
        lock (_gate) m.Live = false;
        _log.WriteLine($"replica {m.Client.Address} left the pool: {why}");
    }

    /// <summary>Failures that another replica may not have: transport, deadline, a replica on another version. Bad requests are not.</summary>
    static bool IsReplicaFailure(Exception e, CancellationToken cancellationToken) =>
        !cancellationToken.IsCancellationRequested && e switch
        {
            RpcException r => r.StatusCode is not (StatusCode.InvalidArgument or StatusCode.Unauthenticated or StatusCode.PermissionDenied),
            TimeoutException or WeightsVersionMismatchException or InvalidDataException or HttpRequestException or IOException => true,
            _ => false,
        };

    static string Describe(Exception e) => e is RpcException r ? $"{r.StatusCode} {r.Status.Detail}" : e.Message;

    /// <summary>Closes the channels and frees the kept weights.</summary>
    public void Dispose()
    {
        foreach (var m in Snapshot()) m.Client.Dispose();
        _current?.Dispose();
    }
}
