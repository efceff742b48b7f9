using System.Diagnostics.Metrics;

namespace Rlhf.Inference.Serving;

/// <summary>
/// The servers' instruments (OpenTelemetry's Meter API; <c>GET /metrics</c> exposes them in Prometheus text): requests by
/// route and status, tokens in and out, generate batch sizes, time to first token and per output token, weight pushes
/// and, observed at scrape time, queue depth and weights version of a rollout replica.
/// </summary>
public static class ServeMetrics
{
    /// <summary>The meter's name (what an OpenTelemetry MeterProvider subscribes to).</summary>
    public const string MeterName = "Rlhf.Inference.Serving";

    static readonly Meter Meter = new(MeterName);
    static readonly Counter<long> Requests = Meter.CreateCounter<long>("rlhf.requests", description: "HTTP and gRPC requests by route and status code");
    static readonly Counter<long> TokensIn = Meter.CreateCounter<long>("rlhf.tokens.in", "{token}", "prompt tokens of generate calls");
    static readonly Counter<long> TokensOut = Meter.CreateCounter<long>("rlhf.tokens.out", "{token}", "generated tokens");
    static readonly Counter<long> Scored = Meter.CreateCounter<long>("rlhf.scored", "{text}", "texts a reward replica scored");
    static readonly Counter<long> Pushes = Meter.CreateCounter<long>("rlhf.weight_pushes", description: "weight versions pushed into a rollout replica");
    static readonly Histogram<int> BatchSize = Meter.CreateHistogram<int>("rlhf.batch_size", "{sequence}", "sequences per engine batch: calls that ran together (call-boundary batching) or joined the running batch at one decode step (continuous)");
    static readonly Histogram<double> TimeToFirstToken = Meter.CreateHistogram<double>("rlhf.time_to_first_token", "s", "from the call's arrival to its first token (waiting and prefill)");
    static readonly Histogram<double> TimePerOutputToken = Meter.CreateHistogram<double>("rlhf.time_per_output_token", "s", "decode time per generated token");

    /// <summary>Observes a rollout replica's queue depth and weights version at scrape time.</summary>
    public static void Observe(RolloutReplica replica)
    {
        Meter.CreateObservableGauge("rlhf.queue_depth", () => replica.Queued, "{call}", "generate calls waiting or running");
        Meter.CreateObservableGauge("rlhf.queued_sequences", () => replica.QueuedSequences, "{sequence}", "sequences waiting for the engine");
        Meter.CreateObservableGauge("rlhf.weights_version", () => (long)replica.Engine.WeightsVersion, description: "the weights version the replica serves");
    }

    /// <summary>One finished request.</summary>
    public static void Request(string route, int status) =>
        Requests.Add(1, new KeyValuePair<string, object?>("route", route), new KeyValuePair<string, object?>("status", status));

    /// <summary>
    /// One generate call that took <paramref name="elapsed"/> from its arrival: its sequences (as one engine batch when
    /// <paramref name="batch"/>), tokens in and out, the time
    /// to its first token (elapsed minus the engine's decode time: waiting and prefill) and the decode time per token.
    /// </summary>
    public static void Generated(IReadOnlyList<Rollout.RolloutResult> results, TimeSpan elapsed, bool batch = true)
    {
        if (batch) BatchSize.Record(results.Count);
        TokensIn.Add(results.Sum(r => (long)r.PromptIds.Length));
        long generated = results.Sum(r => (long)r.ResponseIds.Length);
        TokensOut.Add(generated);
        if (results.Count == 0) return;
        var t = results[0].Timings;
        TimeToFirstToken.Record(Math.Max(0, elapsed.TotalSeconds - t.DecodeMs / 1000.0));
        if (t.GeneratedTokens > 0) TimePerOutputToken.Record(t.DecodeMs / 1000.0 / t.GeneratedTokens);
    }

    /// <summary>Sequences that joined a continuous batch together (one prefill).</summary>
    public static void Batched(int sequences) => BatchSize.Record(sequences);

    /// <summary>Texts scored by a reward replica.</summary>
    public static void ScoredTexts(int count) => Scored.Add(count);

    /// <summary>A weight version pushed.</summary>
    public static void Pushed() => Pushes.Add(1);
}
