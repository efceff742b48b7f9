using Grpc.Core;
using Rlhf.Inference.Services;

namespace Rlhf.Inference.Serving;

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
