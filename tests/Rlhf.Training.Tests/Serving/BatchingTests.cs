using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Http;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Services;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// The rollout replica's batcher: calls that wait while the engine runs go to it together, each gets its own rows, a
/// full queue refuses with 429; and on a real server, 16 concurrent seeded clients get exactly their solo tokens.
/// </summary>
public sealed class BatchingTests
{
    /// <summary>An engine that records each call's prompts and holds every call until released; it answers each request with its first prompt id.</summary>
    sealed class GatedEngine : IRolloutService
    {
        public List<int[]> Calls { get; } = [];
        public TaskCompletionSource Gate { get; set; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public ulong WeightsVersion => 0;
        public IReadOnlyDictionary<string, long[]> WeightLayout => new Dictionary<string, long[]>();
        public PolicyWeightFormat? WeightFormat => null;
        public async Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
        {
            lock (Calls) Calls.Add([.. requests.Select(r => r.PromptIds![0])]);
            await Gate.Task.WaitAsync(cancellationToken);
            for (int i = 0; i < requests.Count; i++) call?.OnToken?.Invoke(new SampledToken(i, 100 + requests[i].PromptIds![0], -1f, null));
            return [.. requests.Select(r => new RolloutResult([.. r.PromptIds!], [100 + r.PromptIds![0]], null, [0f], RolloutFinishReason.Eos, new RolloutTimings(0, 0, requests.Count, 1)))];
        }
        public Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default) => Task.FromResult(TimeSpan.Zero);
        public void Dispose() { }
    }

    static IReadOnlyList<RolloutRequest> Prompts(params int[] first) => [.. first.Select(f => RolloutRequest.FromIds([f, 1]))];

    [Fact]
    public async Task WaitingCallsGoToTheEngineTogetherAndAFullQueueRefuses()
    {
        var engine = new GatedEngine();
        using var replica = new RolloutReplica(engine, null, "m", "ort", maxBatch: 8, maxQueued: 3);
        var first = replica.GenerateAsync(Prompts(1, 2), new RolloutCall(), default);
        await WaitFor(() => engine.Calls.Count == 1);
        // while the engine runs, two calls wait (3 sequences: the queue is full)
        var tokens = new List<(int, int)>();
        var second = replica.GenerateAsync(Prompts(3), new RolloutCall { OnToken = e => { lock (tokens) tokens.Add((e.Request, e.Token)); } }, default);
        var third = replica.GenerateAsync(Prompts(4, 5), new RolloutCall(), default);
        await WaitFor(() => replica.QueuedSequences == 3);
        var full = await Assert.ThrowsAsync<QueueFullException>(() => replica.GenerateAsync(Prompts(6), new RolloutCall(), default));
        Assert.Contains("queue is full", full.Message);

        var gate = engine.Gate;
        engine.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        engine.Gate.SetResult();   // later calls run at once
        gate.SetResult();
        Assert.Equal([101, 102], (await first).Select(r => r.ResponseIds[0]));
        Assert.Equal([103], (await second).Select(r => r.ResponseIds[0]));
        Assert.Equal([104, 105], (await third).Select(r => r.ResponseIds[0]));
        // the two waiting calls were one engine call, in arrival order; tokens went back to their call with its own index
        Assert.Equal([[1, 2], [3, 4, 5]], engine.Calls);
        Assert.Equal([(0, 103)], tokens);
        Assert.Equal(0, replica.QueuedSequences);
    }

    [Fact]
    public async Task ACallCancelledWhileWaitingLeavesTheQueue()
    {
        var engine = new GatedEngine();
        using var replica = new RolloutReplica(engine, null, "m", "ort", maxBatch: 8, maxQueued: 8);
        var first = replica.GenerateAsync(Prompts(1), new RolloutCall(), default);
        await WaitFor(() => engine.Calls.Count == 1);
        using var cts = new CancellationTokenSource();
        var waiting = replica.GenerateAsync(Prompts(2), new RolloutCall(), cts.Token);
        await WaitFor(() => replica.QueuedSequences == 1);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
        Assert.Equal(0, replica.QueuedSequences);
        engine.Gate.SetResult();
        await first;
        Assert.Single(engine.Calls);   // the cancelled call never reached the engine
    }

    [Fact]
    public async Task AFullQueueIsA429WithRetryAfter()
    {
        var ctx = new DefaultHttpContext();
        ctx.Response.Body = new MemoryStream();
        await HttpErrors.Guard(ctx, () => throw new QueueFullException("The replica's queue is full."));
        Assert.Equal(429, ctx.Response.StatusCode);
        Assert.Equal("1", ctx.Response.Headers.RetryAfter.ToString());
        ctx.Response.Body.Position = 0;
        Assert.Equal("rate_limit_error", (string)JsonNode.Parse(new StreamReader(ctx.Response.Body).ReadToEnd())!["error"]!["type"]!);
    }

    static async Task WaitFor(Func<bool> condition)
    {
        var end = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < end, "the condition never held");
            await Task.Delay(5);
        }
    }

    [Fact]
    public async Task SixteenConcurrentSeededClientsGetTheirSoloTokensInFewerBatches()
    {
        using var models = new ServeModels();
        using var server = ServerProcess.Start("rollout", "--model", models.Policy, "--threads", "1");
        using var http = new HttpClient { BaseAddress = new Uri(server.Address), Timeout = TimeSpan.FromSeconds(60) };
        string Body(int k) => new JsonObject
        {
            ["model"] = "tiny-policy", ["prompt"] = $"the product {k % 7} was", ["max_tokens"] = 24, ["seed"] = 1000 + k, ["temperature"] = 1.0, ["top_k"] = 20,
        }.ToJsonString();
        async Task<string> Complete(int k)
        {
            using var r = await http.PostAsync("/v1/completions", new StringContent(Body(k), Encoding.UTF8, "application/json"));
            string text = await r.Content.ReadAsStringAsync();
            Assert.True(r.IsSuccessStatusCode, text);
            return string.Join(",", JsonNode.Parse(text)!["choices"]![0]!["text"]!.ToString());
        }
        static double Batches(string metrics) =>
            Regex.Match(metrics, @"^rlhf_batch_size_count(\{[^}]*\})? (?<v>\d+)", RegexOptions.Multiline) is { Success: true } m ? double.Parse(m.Groups["v"].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;

        var solo = new List<string>();
        for (int k = 0; k < 16; k++) solo.Add(await Complete(k));
        double before = Batches(await http.GetStringAsync("/metrics"));
        string[] together = await Task.WhenAll(Enumerable.Range(0, 16).Select(Complete));
        double batches = Batches(await http.GetStringAsync("/metrics")) - before;
        Assert.Equal(solo, together);
        Assert.True(batches < 16, $"16 concurrent calls ran in {batches} engine batches: nothing was batched");
    }

    [Fact]
    public async Task ARealServerWithAFullQueueAnswers429WithRetryAfter()
    {
        using var models = new ServeModels();
        using var server = ServerProcess.Start("rollout", "--model", models.Policy, "--threads", "1", "--max-queue", "1");
        using var http = new HttpClient { BaseAddress = new Uri(server.Address), Timeout = TimeSpan.FromSeconds(60) };
        StringContent Body(int n, bool stream) => new(new JsonObject
        {
            ["model"] = "tiny-policy", ["prompt"] = "the product", ["max_tokens"] = 58, ["n"] = n, ["seed"] = 1, ["stream"] = stream,
        }.ToJsonString(), Encoding.UTF8, "application/json");
        // A (256 sequences, streamed: its first event says it is in the engine) holds the engine; of B and C (one sequence
        // each) one fills the queue and the other must be refused. A tiny model can finish A before they come, so the
        // scene is played at most five times; a server that never refuses fails every time.
        for (int attempt = 0; attempt < 5; attempt++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Body(256, stream: true) };
            using var running = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            using var reader = new StreamReader(await running.Content.ReadAsStreamAsync());
            Assert.StartsWith("data: ", await reader.ReadLineAsync());
            // B and C at once: one of them waits (and is served once the engine frees up), the other finds the queue full
            var answers = await Task.WhenAll(http.PostAsync("/v1/completions", Body(1, stream: false)), http.PostAsync("/v1/completions", Body(1, stream: false)));
            await reader.ReadToEndAsync();
            using var first = answers[0];
            using var second = answers[1];
            var statuses = answers.Select(a => a.StatusCode).Order().ToArray();
            if (statuses.All(x => x == System.Net.HttpStatusCode.OK)) continue;   // A ended before B and C came
            Assert.Equal([System.Net.HttpStatusCode.OK, System.Net.HttpStatusCode.TooManyRequests], statuses);
            var refused = answers.Single(a => a.StatusCode == System.Net.HttpStatusCode.TooManyRequests);
            Assert.Equal(TimeSpan.FromSeconds(1), refused.Headers.RetryAfter?.Delta);
            Assert.Contains("queue is full", (string)JsonNode.Parse(await refused.Content.ReadAsStringAsync())!["error"]!["message"]!);
            return;
        }
        Assert.Fail("five times over, a call behind a waiting call was accepted by a server whose queue holds one sequence");
    }
}
