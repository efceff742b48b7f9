using Google.Protobuf;
using Grpc.Core;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving.Protocol;
using Rlhf.Inference.Services;

namespace Rlhf.Inference.Serving;

/// <summary>Message conversions shared by the server and the client.</summary>
public static class ProtocolMapping
{
    /// <summary>Most bytes of one PushWeights data chunk.</summary>
    public const int MaxChunkBytes = 1 << 20;

    /// <summary>Trailer that carries the loaded version of a FAILED_PRECONDITION.</summary>
    public const string LoadedVersionTrailer = "rlhf-loaded-version";

    /// <summary>A request as the wire carries it.</summary>
    public static PromptRequest ToProto(RolloutRequest r)
    {
        var s = r.Sampling ?? new SamplingOptions();
        var p = new PromptRequest
        {
            PromptText = r.PromptIds is null ? r.PromptText ?? "" : "",
            Sampling = new Protocol.Sampling
            {
                Temperature = s.Temperature, TopK = s.TopK, TopP = s.TopP, RepetitionPenalty = s.RepetitionPenalty,
                MaxNewTokens = s.MaxNewTokens, Seed = s.Seed,
            },
        };
        if (r.PromptIds is { } ids) p.PromptIds.AddRange(ids);
        p.Sampling.Stop.AddRange(s.StopStrings);
        return p;
    }

    /// <summary>A request from the wire (0 for top_p / repetition_penalty reads as 1, proto3's unset).</summary>
    public static RolloutRequest FromProto(PromptRequest p)
    {
        var s = p.Sampling ?? new Protocol.Sampling { Temperature = 1f, MaxNewTokens = 128 };
        var sampling = new SamplingOptions
        {
            Temperature = s.Temperature, TopK = s.TopK, TopP = s.TopP == 0f ? 1f : s.TopP,
            RepetitionPenalty = s.RepetitionPenalty == 0f ? 1f : s.RepetitionPenalty,
            MaxNewTokens = s.MaxNewTokens, Seed = s.Seed, StopStrings = [.. s.Stop],
        };
        return p.PromptIds.Count > 0 ? RolloutRequest.FromIds([.. p.PromptIds], sampling) : RolloutRequest.FromText(p.PromptText, sampling);
    }

    /// <summary>A result as the wire carries it.</summary>
    public static GenerateResult ToProto(int index, RolloutResult r)
    {
        var g = new GenerateResult { Index = index, Text = r.Text ?? "", FinishReason = FinishName(r.FinishReason), WeightsVersion = r.WeightsVersion };
        g.PromptIds.AddRange(r.PromptIds);
        g.ResponseIds.AddRange(r.ResponseIds);
        g.Logprobs.AddRange(r.LogProbs);
        return g;
    }

    /// <summary>A result from the wire.</summary>
    public static RolloutResult FromProto(GenerateResult g) =>
        new([.. g.PromptIds], [.. g.ResponseIds], g.Text, [.. g.Logprobs], ParseFinish(g.FinishReason),
            new RolloutTimings(0, 0, 1, g.ResponseIds.Count), g.WeightsVersion);

    static string FinishName(RolloutFinishReason r) => r switch
    {
        RolloutFinishReason.Eos => "eos",
        RolloutFinishReason.Length => "length",
        RolloutFinishReason.StopString => "stop",
        _ => throw new ArgumentOutOfRangeException(nameof(r)),
    };

    static RolloutFinishReason ParseFinish(string s) => s switch
    {
        "eos" => RolloutFinishReason.Eos,
        "length" => RolloutFinishReason.Length,
        "stop" => RolloutFinishReason.StopString,
        _ => throw new InvalidDataException($"Unknown finish reason '{s}' from the server."),
    };

    /// <summary>A manifest entry on the wire.</summary>
    public static TensorInfo ToProto(WeightTensorInfo t)
    {
        var p = new TensorInfo { Name = t.Name, Dtype = t.DType, ByteLength = t.ByteLength };
        p.Shape.AddRange(t.Shape);
        return p;
    }

    /// <summary>A manifest entry from the wire.</summary>
    public static WeightTensorInfo FromProto(TensorInfo t) => new(t.Name, t.Dtype, [.. t.Shape], t.ByteLength);

    /// <summary>The time left before a gRPC deadline (none: <see cref="RolloutCall.DefaultTimeout"/>).</summary>
    public static TimeSpan TimeLeft(ServerCallContext context)
    {
        if (context.Deadline == DateTime.MaxValue) return RolloutCall.DefaultTimeout;
        var left = context.Deadline - DateTime.UtcNow;
        return left > TimeSpan.Zero ? left : TimeSpan.FromMilliseconds(1);
    }

    /// <summary>Turns a failure into the gRPC status a client acts on.</summary>
    public static RpcException ToRpc(Exception e) => e switch
    {
        RpcException r => r,
        QueueFullException q => new RpcException(new Status(StatusCode.ResourceExhausted, q.Message)),
        WeightsVersionMismatchException m => new RpcException(new Status(StatusCode.FailedPrecondition, m.Message),
            new Metadata { { LoadedVersionTrailer, m.Loaded.ToString(System.Globalization.CultureInfo.InvariantCulture) } }),
        ArgumentException or FormatException => new RpcException(new Status(StatusCode.InvalidArgument, e.Message)),
        InvalidDataException => new RpcException(new Status(StatusCode.DataLoss, e.Message)),
        TimeoutException => new RpcException(new Status(StatusCode.DeadlineExceeded, e.Message)),
        OperationCanceledException => new RpcException(new Status(StatusCode.Cancelled, e.Message)),
        InvalidOperationException => new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)),
        _ => new RpcException(new Status(StatusCode.Internal, "internal error: " + e.Message)),
    };
}

/// <summary>gRPC <c>rlhf.inference.v1.Rollout</c>.</summary>
sealed class RolloutGrpcService(RolloutReplica replica) : Protocol.Rollout.RolloutBase
{
    public override async Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResult> responseStream, ServerCallContext context)
    {
        IReadOnlyList<RolloutResult> results;
        try
        {
            var requests = request.Requests.Select(ProtocolMapping.FromProto).ToList();
            var call = new RolloutCall { RequiredVersion = request.HasRequiredVersion ? request.RequiredVersion : null, Timeout = ProtocolMapping.TimeLeft(context) };
            results = await replica.GenerateAsync(requests, call, context.CancellationToken);
        }
        catch (Exception e) { throw ProtocolMapping.ToRpc(e); }
        for (int i = 0; i < results.Count; i++) await responseStream.WriteAsync(ProtocolMapping.ToProto(i, results[i]), context.CancellationToken);
    }

    public override async Task<PushWeightsReply> PushWeights(IAsyncStreamReader<WeightsChunk> requestStream, ServerCallContext context)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            var ct = context.CancellationToken;
            if (!await requestStream.MoveNext(ct) || requestStream.Current.PartCase != WeightsChunk.PartOneofCase.Manifest)
                throw new ArgumentException("PushWeights must start with the manifest message.");
            var m = requestStream.Current.Manifest;
            var manifest = m.Tensors.Select(ProtocolMapping.FromProto).Select(t => t.Validate()).ToList();
            var layout = replica.Engine.WeightLayout;
            bool lora = replica.Engine.WeightFormat?.Lora == true;
            foreach (var t in manifest)
            {
                if (lora && PolicyWeightFormat.IsLoraName(t.Name)) continue;   // an adapter's factors: their rank is the push's, the engine checks them
                if (!layout.TryGetValue(t.Name, out var shape))
                    throw new ArgumentException($"Weight '{t.Name}' is not a tensor of this replica's graph (GetStatus lists its weight layout).");
                if (!shape.SequenceEqual(t.Shape))
                    throw new ArgumentException($"Weight '{t.Name}' has shape [{string.Join(", ", t.Shape)}]; the graph stores [{string.Join(", ", shape)}].");
            }
            var data = manifest.Select(t => new float[t.ByteLength / sizeof(float)]).ToList();
            int tensor = 0;
            long offset = 0, total = 0, expected = manifest.Sum(t => t.ByteLength);
            while (await requestStream.MoveNext(ct))
            {
                var chunk = requestStream.Current;
                if (chunk.PartCase != WeightsChunk.PartOneofCase.Data) throw new ArgumentException("Only data chunks may follow the manifest.");
                if (chunk.Data.Length > ProtocolMapping.MaxChunkBytes)
                    throw new ArgumentException($"A data chunk holds {chunk.Data.Length} bytes; at most {ProtocolMapping.MaxChunkBytes} (1 MiB) per chunk.");
                var bytes = chunk.Data.Span;
                total += bytes.Length;
                if (total > expected) throw new ArgumentException($"The push sent more than the {expected} bytes its manifest declares.");
                while (bytes.Length > 0)
                {
                    while (offset == manifest[tensor].ByteLength) { tensor++; offset = 0; }
                    int n = (int)Math.Min(bytes.Length, manifest[tensor].ByteLength - offset);
                    bytes[..n].CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data[tensor].AsSpan())[(int)offset..]);
                    offset += n;
                    bytes = bytes[n..];
                }
            }
            if (total != expected) throw new InvalidDataException($"The push ended after {total} of the {expected} bytes its manifest declares.");
            var weights = PolicyWeights.FromArrays(m.Version, manifest, data, m.Sha256, m.Base.Length > 0 ? m.Base : null);
            await replica.Engine.PushWeightsAsync(weights, ProtocolMapping.TimeLeft(context), ct);
            ServeMetrics.Pushed();
            return new PushWeightsReply { Version = m.Version, Bytes = total, Seconds = sw.Elapsed.TotalSeconds };
        }
        catch (Exception e) { throw ProtocolMapping.ToRpc(e); }
    }

    public override Task<StatusReply> GetStatus(StatusRequest request, ServerCallContext context)
    {
        var reply = new StatusReply { WeightsVersion = replica.Engine.WeightsVersion, Queued = replica.Queued, Model = replica.ModelName, Engine = replica.EngineName };
        foreach (var (name, shape) in replica.Engine.WeightLayout.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            reply.WeightLayout.Add(ProtocolMapping.ToProto(new WeightTensorInfo(name, WeightTensorInfo.Float32, shape, shape.Aggregate(1L, (a, d) => a * d) * sizeof(float))));
        if (replica.Engine.WeightFormat is { } f) reply.WeightFormat = new Protocol.WeightFormat { PackedQkv = f.PackedQkv, Int8 = f.Int8, Lora = f.Lora };
        return Task.FromResult(reply);
    }
}

/// <summary>gRPC <c>rlhf.inference.v1.Reward</c>.</summary>
sealed class RewardGrpcService(RewardReplica replica) : Protocol.Reward.RewardBase
{
    public override async Task<ScoreReply> Score(ScoreRequest request, ServerCallContext context)
    {
        try
        {
            var scores = await replica.ScoreAsync([.. request.Items.Select(i => new RewardRequest(i.Prompt, i.Response))], context.CancellationToken);
            var reply = new ScoreReply();
            reply.Scores.AddRange(scores);
            return reply;
        }
        catch (Exception e) { throw ProtocolMapping.ToRpc(e); }
    }
}
