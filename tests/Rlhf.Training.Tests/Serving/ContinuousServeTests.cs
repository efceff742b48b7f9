using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Rlhf.Export;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Tests.Model;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// Continuous batching on a real <c>rlhf-serve rollout</c> process on 127.0.0.1, with a tiny policy whose context
/// (1024 tokens) lets one greedy call decode for a thousand steps (6 s on one AVX2 core): a short call that arrives while that long one
/// streams is answered before the long one ends, both with their solo tokens; a long stream whose client hangs up frees
/// the only slot (<c>--max-batch 1</c>) for the next call at once. The scenes are timed against a running batch, so
/// the class runs alone (<see cref="TimedServingCollection"/>): tests training on both cores beside it in the same run
/// delayed the client by more than the long call lasts.
/// </summary>
[Collection(TimedServingCollection.Name)]
public sealed class ContinuousServeTests
{
    const int LongTokens = 1000;

    /// <summary>The served models plus a long-context export of a tiny policy (GQA graph, the rollout default).</summary>
    sealed class LongModel : IDisposable
    {
        public ServeModels Models { get; } = new();
        public string Folder { get; }
        public LongModel()
        {
            // wider and deeper than the shared tiny policy, so that a thousand steps take long enough to arrive during
            // (25M parameters: 1000 steps took 2.5 s at 9M parameters on an AVX2 core, and in a full-suite run that once
            // ended before a short call sent after its first token was answered)
            var cfg = Models.Config with { MaxPositionEmbeddings = 1024, HiddenSize = 512, NumAttentionHeads = 16, NumKeyValueHeads = 8, IntermediateSize = 1536, NumHiddenLayers = 8 };
            Folder = Path.Combine(Models.Dir, "long-policy");
            using var m = TinyModels.Randomized(cfg, 9);
            ExportStage.ExportPolicy(m, Folder, ExportStage.DefaultGraph(cfg), new ExportOptions { TokenizerFolder = Path.Combine(Models.Dir, "tokenizer") }, parity: false);
            // an EOS id outside the vocabulary: no call ends before its max_tokens, so the long call is long for sure
            string genai = Path.Combine(Folder, "genai_config.json");
            var config = JsonNode.Parse(File.ReadAllText(genai))!;
            config["model"]!["eos_token_id"] = cfg.VocabSize + 1;
            File.WriteAllText(genai, config.ToJsonString());
        }
        public void Dispose() => Models.Dispose();
    }

    static StringContent Json(JsonObject body) => new(body.ToJsonString(), Encoding.UTF8, "application/json");

    static JsonObject Body(string prompt, int maxTokens, bool stream, float temperature = 0, ulong seed = 0) => new()
    {
        ["model"] = "long-policy", ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = temperature, ["seed"] = seed, ["stream"] = stream,
    };

    /// <summary>An unstreamed completion's text and finish reason.</summary>
    static async Task<(string Text, string Finish)> Complete(HttpClient http, JsonObject body, CancellationToken ct)
    {
        using var r = await http.PostAsync("/v1/completions", Json(body), ct);
        string text = await r.Content.ReadAsStringAsync(ct);
        Assert.True(r.IsSuccessStatusCode, text);
        var choice = JsonNode.Parse(text)!["choices"]![0]!;
        return ((string)choice["text"]!, (string)choice["finish_reason"]!);
    }

    /// <summary>The long call's greedy prompt and its solo answer (<see cref="LongTokens"/> tokens).</summary>
    static async Task<(string Prompt, string Text)> LongPrompt(HttpClient http, CancellationToken ct)
    {
        const string prompt = "the product 3 was";
        var (text, finish) = await Complete(http, Body(prompt, LongTokens, stream: false), ct);
        Assert.Equal("length", finish);
        return (prompt, text);
    }

    /// <summary>
    /// Streams <paramref name="body"/>: <paramref name="first"/> is set at the first event, and <paramref name="onFirst"/>
    /// runs then on the reading thread (before the next line is read); returns the concatenated text.
    /// </summary>
    static async Task<string> Stream(HttpClient http, JsonObject body, TaskCompletionSource first, CancellationToken ct, Action? onFirst = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Json(body) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
        var text = new StringBuilder();
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            ct.ThrowIfCancellationRequested();   // a client that hangs up stops reading, even when lines are already buffered
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
            if (first.TrySetResult()) onFirst?.Invoke();
            text.Append((string?)JsonNode.Parse(line[6..])!["choices"]![0]!["text"]);
        }
        return text.ToString();
    }

    [Fact]
    public async Task AShortCallArrivingWhileALongOneStreamsIsAnsweredFirstWithItsSoloTokens()
    {
        using var model = new LongModel();
        using var server = ServerProcess.Start("rollout", "--model", model.Folder, "--threads", "1");
        using var http = new HttpClient { BaseAddress = new Uri(server.Address), Timeout = TimeSpan.FromSeconds(60) };
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(240));
        var (longPrompt, longSolo) = await LongPrompt(http, cts.Token);
        await Stream(http, Body("the", 2, stream: true), new TaskCompletionSource(), cts.Token);   // the streaming path compiled
        var shortBody = Body("the service", 3, stream: false, temperature: 1f, seed: 7);
        var (shortSolo, _) = await Complete(http, shortBody, cts.Token);

        // The scene is played at most three times: a loaded machine may let the long call end before the short one is sent.
        for (int attempt = 0; attempt < 3; attempt++)
        {
            // the long call runs once its first token has streamed back
            var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var longCall = Stream(http, Body(longPrompt, LongTokens, stream: true), running, cts.Token);
            await Task.WhenAny(running.Task, longCall);
            if (longCall.IsCompleted)
            {
                Assert.Equal(longSolo, await longCall);
                continue;
            }
            var (shortText, _) = await Complete(http, shortBody, cts.Token);
            bool longEnded = longCall.IsCompleted;
            Assert.Equal(shortSolo, shortText);
            Assert.False(longEnded, $"the short call was answered only after the long call's {LongTokens} tokens: it did not join the running batch");
            Assert.Equal(longSolo, await longCall);
            return;
        }
        Assert.Fail("three times over, the long call ended before the short call was sent");
    }

    [Fact]
    public async Task AStreamWhoseClientHangsUpFreesTheOnlySlotAtOnce()
    {
        using var model = new LongModel();
        using var server = ServerProcess.Start("rollout", "--model", model.Folder, "--threads", "1", "--max-batch", "1");
        using var http = new HttpClient { BaseAddress = new Uri(server.Address), Timeout = TimeSpan.FromSeconds(60) };
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(240));
        var (longPrompt, _) = await LongPrompt(http, cts.Token);
        await Stream(http, Body("the", 2, stream: true), new TaskCompletionSource(), cts.Token);   // the streaming path compiled
        var solo = Stopwatch.StartNew();
        await Complete(http, Body(longPrompt, LongTokens, stream: false), cts.Token);
        double longSeconds = solo.Elapsed.TotalSeconds;

        using (var hangUp = CancellationTokenSource.CreateLinkedTokenSource(cts.Token))
        {
            // the client goes away mid-stream: right after the first event, on the reading thread, so a loaded machine
            // cannot let the whole stream arrive first
            var first = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var stream = Stream(http, Body(longPrompt, LongTokens, stream: true), first, hangUp.Token, onFirst: hangUp.Cancel);
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => stream);
            Assert.True(first.Task.IsCompleted);
        }
        var next = Stopwatch.StartNew();
        var (_, finish) = await Complete(http, Body("the service", 3, stream: false), cts.Token);
        Assert.Equal("length", finish);
        Assert.True(next.Elapsed.TotalSeconds < longSeconds / 2,
            $"the next call took {next.Elapsed.TotalSeconds:0.00} s, the long call alone {longSeconds:0.00} s: the hung-up call kept its slot");
    }
}

/// <summary>Serving tests that time a running batch: not run in parallel with any other test.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TimedServingCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "timed serving (runs alone)";
}
