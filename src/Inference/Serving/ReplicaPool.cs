using System.Collections.Concurrent;
using Grpc.Core;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;

namespace Rlhf.Inference.Serving;

/// <summary>
/// Several rollout replicas behind one <see cref="IRolloutService"/>. A generate call is cut into fixed shards of
/// <see cref="ShardSize"/> requests spread over the live replicas (each replica works one shard at a time); a shard whose
/// replica fails or misses its deadline is re-sent to another replica, and that replica leaves the pool. A weight push
/// goes to every live replica; the pool keeps the last message, and a replica that answers again (restarted, or behind)
/// is brought to the current version before it gets work. Every call has a deadline.
/// </summary>
public sealed class ReplicaPool : IRolloutService
{
    readonly RemoteRollouts[] _replicas;
    readonly bool[] _live;
    readonly object _gate = new();
    readonly SemaphoreSlim _calls = new(1, 1);
    readonly TextWriter _log;
    readonly string? _token;
    PolicyWeights? _current;
    ulong _version;

    /// <summary>Opens a pool over <paramref name="addresses"/> (<c>http://127.0.0.1:7001</c>, ...).</summary>
    public ReplicaPool(IReadOnlyList<string> addresses, string? token, int shardSize, TimeSpan callTimeout, TextWriter? log = null)
    {
        if (addresses.Count == 0) throw new ArgumentException("A replica pool needs at least one address.");
        if (shardSize < 1) throw new ArgumentException($"The shard size must be >= 1; got {shardSize}.");
        if (callTimeout <= TimeSpan.Zero) throw new ArgumentException($"The call deadline must be positive; got {callTimeout}.");
        _token = token;
        _replicas = [.. addresses.Select(a => new RemoteRollouts(a, token, TimeSpan.FromSeconds(5)))];
        _live = [.. addresses.Select(_ => true)];
        ShardSize = shardSize;
        CallTimeout = callTimeout;
        _log = log ?? Console.Error;
    }

    /// <summary>Requests per shard.</summary>
    public int ShardSize { get; }

    /// <summary>Deadline of each shard and each push.</summary>
    public TimeSpan CallTimeout { get; }

    /// <summary>Addresses of the replicas now in the pool.</summary>
    public IReadOnlyList<string> LiveReplicas { get { lock (_gate) return [.. _replicas.Where((_, i) => _live[i]).Select(r => r.Address)]; } }

    /// <summary>Shards re-sent after a failure (over the pool's life).</summary>
    public int Resent { get; private set; }

    /// <inheritdoc/>
    public ulong WeightsVersion { get { lock (_gate) return _version; } }

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, long[]> WeightLayout
    {
        get
        {
            var errors = new List<string>();
            foreach (var r in _replicas)
            {
                try { return r.WeightLayout; }
                catch (RpcException e) { errors.Add($"{r.Address}: {e.Status.Detail}"); }
            }
            throw new InvalidOperationException("No rollout replica answers: " + string.Join("; ", errors));
        }
    }

    /// <inheritdoc/>
    public async Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        await _calls.WaitAsync(cancellationToken);
        try
        {
            lock (_gate)
            {
                _current?.Dispose();
                (_current, _version) = (weights, weights.Version);
            }
            int[] targets = [.. Enumerable.Range(0, _replicas.Length).Where(i => _live[i])];
            var outcomes = await Task.WhenAll(targets.Select(i => Send(i, weights, timeout ?? CallTimeout, cancellationToken)));
            if (!outcomes.Any(ok => ok))
                throw new InvalidOperationException($"No rollout replica took weights version {weights.Version} ({string.Join(", ", _replicas.Select(r => r.Address))}); start them or fix the addresses.");
            return sw.Elapsed;
        }
        finally { _calls.Release(); }
    }

    async Task<bool> Send(int i, PolicyWeights weights, TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            await _replicas[i].SendWeightsAsync(weights, timeout, cancellationToken);
            return true;
        }
        catch (Exception e) when (IsReplicaFailure(e, cancellationToken))
        {
            Drop(i, $"push of version {weights.Version} failed: {Describe(e)}");
            return false;
        }
    }

    /// <inheritdoc/>
    public async Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
    {
        call ??= new RolloutCall { Timeout = CallTimeout };
        await _calls.WaitAsync(cancellationToken);
        try
        {
            await Rejoin(cancellationToken);
            var shards = requests.Chunk(ShardSize).ToArray();
            var results = new IReadOnlyList<RolloutResult>?[shards.Length];
            var queue = new ConcurrentQueue<int>(Enumerable.Range(0, shards.Length));
            var attempts = new int[shards.Length];
            // Rounds: every live replica drains the queue; a failed shard goes back to it for the replicas still live.
            while (!queue.IsEmpty)
            {
                int[] workers;
                lock (_gate) workers = [.. Enumerable.Range(0, _replicas.Length).Where(i => _live[i])];
                if (workers.Length == 0) throw new InvalidOperationException($"No rollout replica is live ({string.Join(", ", _replicas.Select(r => r.Address))}).");
                await Task.WhenAll(workers.Select(i => Work(i)));
            }

            async Task Work(int i)
            {
                while (queue.TryDequeue(out int s))
                {
                    try { results[s] = await _replicas[i].GenerateAsync(shards[s], call, cancellationToken); }
                    catch (Exception e) when (IsReplicaFailure(e, cancellationToken))
                    {
                        Drop(i, $"shard {s} failed: {Describe(e)}; re-sending it");
                        if (Interlocked.Increment(ref attempts[s]) > _replicas.Length)
                            throw new InvalidOperationException($"Shard {s} failed on {attempts[s]} replicas; giving up.", e);
                        lock (_gate) Resent++;
                        queue.Enqueue(s);
                        return;
                    }
                }
            }
            int missing = Array.FindIndex(results, r => r is null);
            if (missing >= 0) throw new InvalidOperationException($"Every rollout replica failed; shard {missing} has no answer ({string.Join(", ", _replicas.Select(r => r.Address))}).");
            return [.. results.SelectMany(r => r!)];
        }
        finally { _calls.Release(); }
    }

    /// <summary>Brings back dropped replicas that answer again, after pushing them the current weights when they hold others.</summary>
    async Task Rejoin(CancellationToken cancellationToken)
    {
        for (int i = 0; i < _replicas.Length; i++)
        {
            if (_live[i]) continue;
            // A fresh channel: the old one may hold its failed connection in back-off.
            var old = _replicas[i];
            _replicas[i] = new RemoteRollouts(old.Address, _token, old.StatusTimeout);
            old.Dispose();
            try
            {
                var status = await _replicas[i].StatusAsync(cancellationToken);
                PolicyWeights? current;
                ulong version;
                lock (_gate) (current, version) = (_current, _version);
                if (status.WeightsVersion != version)
                {
                    if (current is null) continue;   // nothing to catch up with
                    await _replicas[i].SendWeightsAsync(current, CallTimeout, cancellationToken);
                }
                lock (_gate) _live[i] = true;
                _log.WriteLine($"replica {_replicas[i].Address} rejoined at weights version {version}.");
            }
            catch (Exception e) when (IsReplicaFailure(e, cancellationToken)) { }
        }
    }

    void Drop(int i, string why)
    {
        lock (_gate) _live[i] = false;
        _log.WriteLine($"replica {_replicas[i].Address} left the pool: {why}");
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
        foreach (var r in _replicas) r.Dispose();
        _current?.Dispose();
    }
}

/// <summary>A reward replica reached over gRPC: one Score call per batch (the server scores it as the in-process scorer would), bounded retries.</summary>
public sealed class RemoteRewards : IRewardService
{
    readonly Grpc.Net.Client.GrpcChannel _channel;
    readonly Protocol.Reward.RewardClient _client;
    readonly Metadata _headers = [];

    /// <summary>Connects (lazily) to <paramref name="address"/>.</summary>
    public RemoteRewards(string address, string? token, TimeSpan callTimeout, int attempts = 3)
    {
        if (!Uri.TryCreate(address, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new ArgumentException($"'{address}' is not a reward replica address; give http://host:port.");
        if (attempts < 1) throw new ArgumentException($"attempts must be >= 1; got {attempts}.");
        Address = address;
        CallTimeout = callTimeout;
        Attempts = attempts;
        _channel = Grpc.Net.Client.GrpcChannel.ForAddress(uri, new Grpc.Net.Client.GrpcChannelOptions { MaxReceiveMessageSize = 64 << 20, MaxSendMessageSize = 64 << 20 });
        _client = new Protocol.Reward.RewardClient(_channel);
        if (token is not null) _headers.Add("authorization", "Bearer " + token);
    }

    /// <summary>The replica's address.</summary>
    public string Address { get; }
    /// <summary>Deadline of one Score call.</summary>
    public TimeSpan CallTimeout { get; }
    /// <summary>Calls before giving up.</summary>
    public int Attempts { get; }

    /// <inheritdoc/>
    public float[] Score(IReadOnlyList<Reward.RewardRequest> requests)
    {
        var request = new Protocol.ScoreRequest();
        request.Items.AddRange(requests.Select(r => new Protocol.ScoreItem { Prompt = r.Prompt, Response = r.Response }));
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                var reply = _client.Score(request, _headers, DateTime.UtcNow + CallTimeout);
                if (reply.Scores.Count != requests.Count)
                    throw new InvalidDataException($"{Address} returned {reply.Scores.Count} scores for {requests.Count} texts.");
                return [.. reply.Scores];
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.Internal && attempt < Attempts)
            {
                Thread.Sleep(TimeSpan.FromMilliseconds(200 * attempt));
            }
            catch (RpcException e)
            {
                throw new InvalidOperationException($"Reward replica {Address} failed after {attempt} attempt(s): {e.StatusCode} {e.Status.Detail}", e);
            }
        }
    }

    /// <summary>Closes the channel.</summary>
    public void Dispose() => _channel.Dispose();
}
