using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using OpenAI.Chat;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// <c>stream: true</c> as clients use it, on a real <c>rlhf-serve rollout</c> process on 127.0.0.1: the official OpenAI
/// .NET client and Microsoft.Extensions.AI's <see cref="IChatClient"/> stream chat completions whose concatenated deltas
/// equal the unstreamed answers; raw server-sent events for completions; a disconnect mid-stream frees the server.
/// </summary>
public sealed class StreamingTests
{
    const string Template = "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}";

    sealed class Server : IDisposable
    {
        public ServeModels Models { get; } = new();
        public ReplicaProcess Process { get; }
        public Server()
        {
            string chat = Models.ChatFolder("chat-policy", Template);
            Process = ServerProcess.Start("rollout", "--model", chat, "--threads", "1", "--token-file", Models.TokenFile);
        }
        public void Dispose()
        {
            Process.Dispose();
            Models.Dispose();
        }
    }

    static HttpClient Http(string address)
    {
        var c = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(60) };
        c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ServeModels.Token);
        return c;
    }

    /// <summary>The data lines of a server-sent event stream, parsed ([DONE] as null).</summary>
    static async Task<List<JsonNode?>> Events(HttpResponseMessage response)
    {
        var events = new List<JsonNode?>();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        while (await reader.ReadLineAsync() is { } line)
            if (line.StartsWith("data: ", StringComparison.Ordinal))
                events.Add(line == "data: [DONE]" ? null : JsonNode.Parse(line[6..]));
        return events;
    }

    [Fact]
    public async Task StreamedCompletionsEqualTheUnstreamedAnswers()
    {
        using var server = new Server();
        using var http = Http(server.Process.Address);
        var body = new JsonObject { ["model"] = "chat-policy", ["prompt"] = "the product", ["max_tokens"] = 12, ["n"] = 3, ["seed"] = 5, ["temperature"] = 1.0 };
        using var plain = await http.PostAsync("/v1/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        var expected = JsonNode.Parse(await plain.Content.ReadAsStringAsync())!;

        body["stream"] = true;
        body["stream_options"] = new JsonObject { ["include_usage"] = true };
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
        using var streamed = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, streamed.StatusCode);
        Assert.Equal("text/event-stream", streamed.Content.Headers.ContentType!.MediaType);
        var events = await Events(streamed);
        Assert.Null(events[^1]);                                             // data: [DONE]
        var usage = events[^2]!;
        Assert.Empty(usage["choices"]!.AsArray());
        Assert.Equal((int)expected["usage"]!["completion_tokens"]!, (int)usage["usage"]!["completion_tokens"]!);
        var chunks = events.Take(events.Count - 2).Select(e => e!["choices"]![0]!).ToList();
        Assert.All(events.Take(events.Count - 2), e => Assert.Equal("text_completion", (string)e!["object"]!));
        for (int k = 0; k < 3; k++)
        {
            var mine = chunks.Where(c => (int)c["index"]! == k).ToList();
            Assert.Equal((string)expected["choices"]![k]!["text"]!, string.Concat(mine.Select(c => (string)c["text"]!)));
            Assert.Equal((string)expected["choices"]![k]!["finish_reason"]!, (string)mine[^1]["finish_reason"]!);
            Assert.All(mine.SkipLast(1), c => Assert.Null(c["finish_reason"]));
            Assert.True(mine.Count >= 3, $"choice {k} came in {mine.Count} chunks: the text must flow as it is sampled");
        }
    }

    [Fact]
    public async Task TheOpenAiClientAndIChatClientStreamTheSameChatAnswer()
    {
        using var server = new Server();
        var client = new OpenAIClientFor(server.Process.Address);
        var messages = new List<OpenAI.Chat.ChatMessage> { new UserChatMessage("the product") };
#pragma warning disable OPENAI001   // Seed is marked experimental in the OpenAI client
        var options = new ChatCompletionOptions { Seed = 11, Temperature = 1f, MaxOutputTokenCount = 12 };
#pragma warning restore OPENAI001
        var chat = client.Chat;
        ChatCompletion whole = await chat.CompleteChatAsync(messages, options);
        string expected = whole.Content[0].Text;

        var streamed = new StringBuilder();
        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var update in chat.CompleteChatStreamingAsync(messages, options))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            finish ??= update.FinishReason;
        }
        Assert.Equal(expected, streamed.ToString());
        Assert.Equal(whole.FinishReason, finish);

        // Microsoft.Extensions.AI over the same client, streaming and not
        IChatClient ai = chat.AsIChatClient();
        var aiOptions = new ChatOptions { Seed = 11, Temperature = 1f, MaxOutputTokens = 12 };
        var aiMessages = new List<Microsoft.Extensions.AI.ChatMessage> { new(ChatRole.User, "the product") };
        Assert.Equal(expected, (await ai.GetResponseAsync(aiMessages, aiOptions)).Text);
        var aiStreamed = new StringBuilder();
        await foreach (var update in ai.GetStreamingResponseAsync(aiMessages, aiOptions)) aiStreamed.Append(update.Text);
        Assert.Equal(expected, aiStreamed.ToString());
    }

    [Fact]
    public async Task ADisconnectMidStreamFreesTheServer()
    {
        using var server = new Server();
        using var http = Http(server.Process.Address);
        var body = new JsonObject { ["model"] = "chat-policy", ["prompt"] = "the product", ["max_tokens"] = 58, ["n"] = 256, ["seed"] = 1, ["stream"] = true };
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cts.Token));
            Assert.StartsWith("data: ", await reader.ReadLineAsync(cts.Token));   // the first token arrived: the call is in the engine
        }   // the client hangs up here
        // the server cancels the call at its next step: /ready shows the queue empty again, and a new request is served
        var end = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while ((int)JsonNode.Parse(await http.GetStringAsync("/ready"))!["queued"]! != 0)
        {
            Assert.True(DateTime.UtcNow < end, "the disconnected call still holds the engine");
            await Task.Delay(10);
        }
        body["stream"] = false;
        body["n"] = 1;
        body["max_tokens"] = 4;
        using var next = await http.PostAsync("/v1/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, next.StatusCode);
    }

    [Fact]
    public async Task TopLogprobsAreTheMostLikelyTokensOfEachStep()
    {
        using var server = new Server();
        using var http = Http(server.Process.Address);
        var body = new JsonObject { ["model"] = "chat-policy", ["prompt"] = "the product", ["max_tokens"] = 5, ["seed"] = 2, ["temperature"] = 0.7, ["logprobs"] = 3 };
        using var r = await http.PostAsync("/v1/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        var choice = JsonNode.Parse(await r.Content.ReadAsStringAsync())!["choices"]![0]!;
        var tops = choice["logprobs"]!["top_logprobs"]!.AsArray();
        float[] chosen = [.. choice["logprobs"]!["token_logprobs"]!.AsArray().Select(x => (float)x!)];
        Assert.Equal(chosen.Length, tops.Count);
        // independently: the engine's full-sequence logits at each step, / T, log softmax, the 3 largest
        using var engine = RolloutEngine.Load(server.Models.Policy, new RolloutEngineOptions { Threads = 1 });
        var tokenizer = TextTokenizer.Load(server.Models.Policy);
        int[] prompt = PromptFormat.PromptIds(tokenizer, "the product");
        var again = engine.Generate(RolloutRequest.FromIds(prompt, new SamplingOptions { Temperature = 0.7f, MaxNewTokens = 5, Seed = 2 }));
        int vocab = engine.Signature.VocabSize;
        for (int t = 0; t < tops.Count; t++)
        {
            float[] logits = engine.Logits([.. prompt, .. again.ResponseIds[..t]]);
            double[] z = [.. logits.AsSpan((prompt.Length + t - 1) * vocab, vocab).ToArray().Select(x => x / 0.7)];
            double m = z.Max(), logS = Math.Log(z.Sum(x => Math.Exp(x - m)));
            double[] expected = [.. z.Select(x => x - m - logS).OrderDescending().Take(3)];
            double[] served = [.. tops[t]!.AsObject().Select(kv => (double)(float)kv.Value!).OrderDescending()];
            Assert.True(served.Length is >= 1 and <= 3);   // pieces that decode alike share a key
            Assert.True(Math.Abs(expected[0] - served[0]) < 1e-4, $"step {t}: most likely {served[0]}, by hand {expected[0]}");
            Assert.True(served[0] >= chosen[t] - 1e-6f, $"step {t}: the chosen token cannot be likelier than the most likely");
        }

        // chat: top_logprobs alternatives per token, logprob-sorted, the chosen token's logprob beside them
        var chat = new JsonObject
        {
            ["model"] = "chat-policy", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "the product" }),
            ["max_tokens"] = 4, ["seed"] = 3, ["logprobs"] = true, ["top_logprobs"] = 2,
        };
        using var c = await http.PostAsync("/v1/chat/completions", new StringContent(chat.ToJsonString(), Encoding.UTF8, "application/json"));
        var content = JsonNode.Parse(await c.Content.ReadAsStringAsync())!["choices"]![0]!["logprobs"]!["content"]!.AsArray();
        Assert.NotEmpty(content);
        foreach (var token in content)
        {
            float[] alternatives = [.. token!["top_logprobs"]!.AsArray().Select(a => (float)a!["logprob"]!)];
            Assert.Equal(2, alternatives.Length);
            Assert.True(alternatives[0] >= alternatives[1] && alternatives[0] >= (float)token["logprob"]! - 1e-6f);
        }
        chat.Remove("logprobs");
        using var bad = await http.PostAsync("/v1/chat/completions", new StringContent(chat.ToJsonString(), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
    }

    [Fact]
    public async Task StreamedLogprobsEqualTheUnstreamedOnes()
    {
        using var server = new Server();
        using var http = Http(server.Process.Address);
        // completions: the legacy object, chunk by chunk, concatenates to the whole answer's
        var body = new JsonObject { ["model"] = "chat-policy", ["prompt"] = "the product", ["max_tokens"] = 10, ["seed"] = 8, ["logprobs"] = 2 };
        using var plain = await http.PostAsync("/v1/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        var expected = JsonNode.Parse(await plain.Content.ReadAsStringAsync())!["choices"]![0]!["logprobs"]!;
        body["stream"] = true;
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
        using var streamed = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        var parts = (await Events(streamed)).Where(e => e is not null).Select(e => e!["choices"]![0]!["logprobs"]).OfType<JsonObject>().ToList();
        Assert.NotEmpty(parts);
        foreach (string key in new[] { "tokens", "token_logprobs", "top_logprobs", "text_offset" })
            Assert.Equal(expected[key]!.ToJsonString(), new JsonArray([.. parts.SelectMany(p => p[key]!.AsArray()).Select(x => x?.DeepClone())]).ToJsonString());

        // chat: logprobs.content, chunk by chunk, concatenates to the whole answer's
        var chat = new JsonObject
        {
            ["model"] = "chat-policy", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "the product" }),
            ["max_tokens"] = 8, ["seed"] = 4, ["logprobs"] = true, ["top_logprobs"] = 2,
        };
        using var whole = await http.PostAsync("/v1/chat/completions", new StringContent(chat.ToJsonString(), Encoding.UTF8, "application/json"));
        var content = JsonNode.Parse(await whole.Content.ReadAsStringAsync())!["choices"]![0]!["logprobs"]!["content"]!;
        chat["stream"] = true;
        using var chatRequest = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new StringContent(chat.ToJsonString(), Encoding.UTF8, "application/json") };
        using var chatStreamed = await http.SendAsync(chatRequest, HttpCompletionOption.ResponseHeadersRead);
        var chatParts = (await Events(chatStreamed)).Where(e => e is not null).Select(e => e!["choices"]![0]!["logprobs"]).OfType<JsonObject>();
        Assert.Equal(content.ToJsonString(), new JsonArray([.. chatParts.SelectMany(p => p["content"]!.AsArray()).Select(x => x?.DeepClone())]).ToJsonString());
    }

    [Fact]
    public void ChoiceTextHoldsBackPartialCharactersAndPossibleStopStrings()
    {
        var tokenizer = TextTokenizer.Load(Path.Combine(Rlhf.Training.Tests.Ppo.PpoTrainerTests.Models.Value.Sft));
        int[] ids = tokenizer.Encode(" café naïve");
        var text = new StreamedAnswers.ChoiceText(holdBack: 0);
        var parts = ids.Select(t => text.Add(t, tokenizer)).ToList();
        Assert.DoesNotContain(parts, p => p.Contains('\uFFFD'));
        Assert.Equal("café naïve", string.Concat(parts) + text.Finish("café naïve"));
        // with a stop string of 3 characters, the last 2 characters wait until the end
        var held = new StreamedAnswers.ChoiceText(holdBack: 2);
        string sent = string.Concat(ids.Select(t => held.Add(t, tokenizer)));
        Assert.Equal("café naï", sent);
        Assert.Equal("ve", held.Finish("café naïve"));
    }

    /// <summary>The official client pointed at the server, its bearer token as the API key.</summary>
    sealed class OpenAIClientFor(string address)
    {
        public ChatClient Chat { get; } = new OpenAI.OpenAIClient(new ApiKeyCredential(ServeModels.Token),
            new OpenAI.OpenAIClientOptions { Endpoint = new Uri(address + "/v1") }).GetChatClient("chat-policy");
    }
}
