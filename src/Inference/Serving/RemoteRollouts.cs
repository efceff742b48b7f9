using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving.Protocol;
using Rlhf.Inference.Services;

namespace Rlhf.Inference.Serving;

/// <summary>
/// A rollout replica reached over gRPC, behind <see cref="IRolloutService"/>: Generate with a deadline (and a required
/// version), PushWeights as a client stream (manifest, then chunks of at most 1 MiB), GetStatus.
/// </summary>
public sealed class RemoteRollouts : IRolloutService
{
    readonly GrpcChannel _channel;
    readonly Protocol.Rollout.RolloutClient _client;
    readonly Metadata _headers = [];
    IReadOnlyDictionary<string, long[]>? _layout;

    /// <summary>Connects (lazily) to <paramref name="address"/> (<c>http://127.0.0.1:7001</c>) with an optional bearer token.</summary>
    public RemoteRollouts(string address, string? token = null, TimeSpan? statusTimeout = null)
    {
        if (!Uri.TryCreate(address, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new ArgumentException($"'{address}' is not a replica address; give http://host:port.");
        Address = address;
        StatusTimeout = statusTimeout ?? TimeSpan.FromSeconds(30);
        _channel = GrpcChannel.ForAddress(uri, new GrpcChannelOptions { MaxReceiveMessageSize = 64 << 20, MaxSendMessageSize = 8 << 20 });
        _client = new Protocol.Rollout.RolloutClient(_channel);
        if (token is not null) _headers.Add("authorization", "Bearer " + token);
    }

    /// <summary>The replica's address.</summary>
    public string Address { get; }

    /// <summary>Deadline of status calls.</summary>
    public TimeSpan StatusTimeout { get; }

    /// <summary>The replica's status.</summary>
    public async Task<StatusReply> StatusAsync(CancellationToken cancellationToken = default) =>
        await _client.GetStatusAsync(new StatusRequest(), _headers, DateTime.UtcNow + StatusTimeout, cancellationToken);

    /// <inheritdoc/>
    public ulong WeightsVersion => StatusAsync().GetAwaiter().GetResult().WeightsVersion;

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, long[]> WeightLayout => _layout ??=
        StatusAsync().GetAwaiter().GetResult().WeightLayout.ToDictionary(t => t.Name, t => t.Shape.ToArray(), StringComparer.Ordinal);

    /// <inheritdoc/>
    public PolicyWeightFormat? WeightFormat => StatusAsync().GetAwaiter().GetResult().WeightFormat is { } f ? new PolicyWeightFormat(f.PackedQkv, f.Int8, f.Lora) : null;

    /// <inheritdoc/>
    public async Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
    {
        call ??= new RolloutCall();
        var request = new GenerateRequest();
        request.Requests.AddRange(requests.Select(ProtocolMapping.ToProto));
        if (call.RequiredVersion is { } v) request.RequiredVersion = v;
        var results = new RolloutResult?[requests.Count];
        try
        {
            using var stream = _client.Generate(request, _headers, DateTime.UtcNow + call.Timeout, cancellationToken);
            await foreach (var g in stream.ResponseStream.ReadAllAsync(cancellationToken))
            {
                if (g.Index < 0 || g.Index >= results.Length || results[g.Index] is not null)
                    throw new InvalidDataException($"{Address} answered request index {g.Index} twice or out of range.");
                results[g.Index] = ProtocolMapping.FromProto(g);
            }
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.FailedPrecondition && call.RequiredVersion is { } required &&
                                     ulong.TryParse(e.Trailers.GetValue(ProtocolMapping.LoadedVersionTrailer), out ulong loaded))
        {
            throw new WeightsVersionMismatchException(required, loaded);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.DeadlineExceeded)
        {
            throw new TimeoutException($"Generate on {Address} missed its deadline of {call.Timeout.TotalSeconds:0.###} s.", e);
        }
        int missing = Array.FindIndex(results, r => r is null);
        if (missing >= 0) throw new InvalidDataException($"{Address} answered {results.Count(r => r is not null)} of {results.Length} requests (index {missing} missing).");
        if (call.RequiredVersion is { } want && results.FirstOrDefault(r => r!.WeightsVersion != want) is { } other)
            throw new InvalidDataException($"{Address} answered with weights version {other.WeightsVersion} where {want} was required.");
        return results!;
    }

    /// <inheritdoc/>
    public async Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        using var owned = weights;
        return await SendWeightsAsync(weights, timeout, cancellationToken);
    }

    /// <summary>Streams <paramref name="weights"/> to the replica without taking ownership (a pool keeps the message to catch up replicas later).</summary>
    public async Task<TimeSpan> SendWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var deadline = DateTime.UtcNow + (timeout ?? RolloutCall.DefaultTimeout);
        try
        {
            using var call = _client.PushWeights(_headers, deadline, cancellationToken);
            var manifest = new WeightsManifest { Version = weights.Version, Sha256 = weights.Sha256, Base = weights.Base ?? "" };
            manifest.Tensors.AddRange(weights.Manifest.Select(ProtocolMapping.ToProto));
            await call.RequestStream.WriteAsync(new WeightsChunk { Manifest = manifest }, cancellationToken);
            var buffer = new byte[ProtocolMapping.MaxChunkBytes];
            int filled = 0;
            foreach (var t in weights.Manifest)
            {
                long offset = 0;
                while (offset < t.ByteLength)
                {
                    int n = (int)Math.Min(buffer.Length - filled, t.ByteLength - offset);
                    weights.Bytes(t.Name).Slice((int)offset, n).CopyTo(buffer.AsSpan(filled));
                    filled += n;
                    offset += n;
                    if (filled == buffer.Length)
                    {
                        await call.RequestStream.WriteAsync(new WeightsChunk { Data = ByteString.CopyFrom(buffer) }, cancellationToken);
                        filled = 0;
                    }
                }
            }
            if (filled > 0) await call.RequestStream.WriteAsync(new WeightsChunk { Data = ByteString.CopyFrom(buffer, 0, filled) }, cancellationToken);
            await call.RequestStream.CompleteAsync();
            await call;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.DeadlineExceeded)
        {
            throw new TimeoutException($"PushWeights of version {weights.Version} to {Address} missed its deadline.", e);
        }
        return sw.Elapsed;
    }

    /// <summary>Closes the channel.</summary>
    public void Dispose() => _channel.Dispose();
}
