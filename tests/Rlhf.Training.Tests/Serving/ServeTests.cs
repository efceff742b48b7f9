using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Services;
using Rlhf.Training.Common;

namespace Rlhf.Training.Tests.Serving;

/// <summary>Models and one rollout replica (with a bearer token) shared by the HTTP contract tests.</summary>
public sealed class RolloutServerFixture : IDisposable
{
    internal ServeModels Models { get; } = new();
    internal ReplicaProcess Server { get; }

    public RolloutServerFixture()
    {
        try { Server = ServerProcess.Start("rollout", "--model", Models.Policy, "--threads", "1", "--token-file", Models.TokenFile); }
        catch
        {
            Models.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Server.Dispose();
        Models.Dispose();
    }
}

/// <summary>
/// The inference server as a user runs it: real <c>rlhf-serve</c> processes on 127.0.0.1, every call with a deadline,
/// every process stopped by the test.
/// </summary>
public sealed class ServeTests(RolloutServerFixture fx) : IClassFixture<RolloutServerFixture>
{
    static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(60);
    string ModelId => Path.GetFileName(fx.Models.Policy);

    static HttpClient Http(string address, string? token = ServeModels.Token)
    {
        var c = new HttpClient { BaseAddress = new Uri(address), Timeout = CallTimeout };
        if (token is not null) c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return c;
    }

    static async Task<(HttpStatusCode Status, JsonNode? Body)> Post(HttpClient c, string path, string json)
    {
        using var r = await c.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        string text = await r.Content.ReadAsStringAsync();
        return (r.StatusCode, text.Length > 0 ? JsonNode.Parse(text) : null);
    }

    string Completion(object body) => JsonSerializer.Serialize(body);

    [Fact]
    public async Task ModelsAndCompletionsFollowOpenAisContract()
    {
        // GET /v1/models through the official OpenAI .NET client (bearer token = its API key).
        var client = new OpenAI.OpenAIClient(new ApiKeyCredential(ServeModels.Token), new OpenAI.OpenAIClientOptions { Endpoint = new Uri(fx.Server.Address + "/v1") });
        var models = await client.GetOpenAIModelClient().GetModelsAsync();
        Assert.Contains(models.Value, m => m.Id == ModelId);

        // POST /v1/completions as a curl user sends it (the OpenAI .NET client has no public legacy-completions client).
        using var http = Http(fx.Server.Address);
        var (status, body) = await Post(http, "/v1/completions", Completion(new { model = ModelId, prompt = "the product", max_tokens = 6, temperature = 0, logprobs = 1 }));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text_completion", (string?)body!["object"]);
        var choice = body["choices"]![0]!;
        using var engine = RolloutEngine.Load(fx.Models.Policy, new RolloutEngineOptions { Threads = 1 });
        var expected = engine.Generate(RolloutRequest.FromText("the product", new SamplingOptions { Temperature = 0, MaxNewTokens = 6 }));
        Assert.Equal(expected.Text, (string?)choice["text"]);
        Assert.Equal(expected.FinishReason == RolloutFinishReason.Length ? "length" : "stop", (string?)choice["finish_reason"]);
        float[] lps = [.. choice["logprobs"]!["token_logprobs"]!.AsArray().Select(x => (float)x!)];
        Assert.Equal(expected.LogProbs, lps);
        Assert.Equal(expected.ResponseIds.Length, (int)body["usage"]!["completion_tokens"]!);
        Assert.Equal(expected.PromptIds.Length, (int)body["usage"]!["prompt_tokens"]!);
        Assert.Equal(0UL, (ulong)body["weights_version"]!);

        // Token-id prompts, n samples per prompt, a seed, a stop string.
        int[] ids = expected.PromptIds;
        (status, body) = await Post(http, "/v1/completions", Completion(new { model = ModelId, prompt = new[] { ids, ids }, max_tokens = 5, n = 2, seed = 7, temperature = 1.0, top_k = 20, stop = "\n" }));
        Assert.Equal(HttpStatusCode.OK, status);
        var choices = body!["choices"]!.AsArray();
        Assert.Equal(4, choices.Count);
        Assert.Equal([0, 1, 2, 3], choices.Select(c => (int)c!["index"]!));
        var seeded = engine.Generate([.. Enumerable.Range(0, 4).Select(k => RolloutRequest.FromIds(ids,
            new SamplingOptions { Temperature = 1, TopK = 20, MaxNewTokens = 5, Seed = 7UL + (ulong)k, StopStrings = ["\n"] }))]);
        Assert.Equal(seeded.Select(r => r.Text), choices.Select(c => (string?)c!["text"]));
    }

    [Fact]
    public async Task ChatCompletionsRenderTheFoldersTemplateForTheOpenAiClient()
    {
        // ChatML's shape with short markers (the tiny model's context is short and its tokenizer spells markers out byte by byte).
        // [:1], not [0]: GenAI 0.18 renders a string's item ('ab'[0], 'ab'[-1]) empty where jinja2 gives the character.
        const string template = "{{ bos_token }}{% for message in messages %}{{ '<' + message['role'][:1] + '>' + message['content'] | trim + '\n' }}{% endfor %}" +
                                "{% if add_generation_prompt %}{{ '<a>' }}{% endif %}";
        string folder = fx.Models.ChatFolder("tiny-chat", template);
        using var server = ServerProcess.Start("rollout", "--model", folder, "--threads", "1", "--token-file", fx.Models.TokenFile);
        var tokenizer = Rlhf.Inference.Tokenization.TextTokenizer.Load(folder);
        // What the template gives for this conversation, written out by hand.
        string prompt = tokenizer.TokenText(tokenizer.BosId!.Value) + "<s>Be brief.\n<u>the product\n<a>";
        int[] ids = tokenizer.Encode(prompt);

        var options = new OpenAI.OpenAIClientOptions { Endpoint = new Uri(server.Address + "/v1") };
        var chat = new OpenAI.Chat.ChatClient("tiny-chat", new ApiKeyCredential(ServeModels.Token), options);
#pragma warning disable OPENAI001   // Seed is marked experimental in the client
        var settings = new OpenAI.Chat.ChatCompletionOptions { MaxOutputTokenCount = 6, Temperature = 1f, Seed = 11, IncludeLogProbabilities = true };
#pragma warning restore OPENAI001
        var answer = (await chat.CompleteChatAsync([new OpenAI.Chat.SystemChatMessage("Be brief."), new OpenAI.Chat.UserChatMessage("  the product ")], settings)).Value;

        // The hand-written prompt's ids through /v1/completions with the same seed: the same tokens, logprobs and counts.
        using var http = Http(server.Address);
        var (status, body) = await Post(http, "/v1/completions", Completion(new { model = "tiny-chat", prompt = ids, max_tokens = 6, temperature = 1.0, seed = 11, logprobs = 1 }));
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = body!["choices"]![0]!;
        Assert.Equal(OpenAI.Chat.ChatMessageRole.Assistant, answer.Role);
        Assert.Equal((string?)choice["text"], answer.Content[0].Text);
        Assert.Equal((string?)choice["finish_reason"] == "length" ? OpenAI.Chat.ChatFinishReason.Length : OpenAI.Chat.ChatFinishReason.Stop, answer.FinishReason);
        Assert.Equal([.. choice["logprobs"]!["token_logprobs"]!.AsArray().Select(x => (float)x!)], answer.ContentTokenLogProbabilities.Select(l => l.LogProbability));
        Assert.Equal([.. choice["logprobs"]!["tokens"]!.AsArray().Select(x => (string?)x)], answer.ContentTokenLogProbabilities.Select(l => l.Token));
        Assert.Equal((ids.Length, (int)body["usage"]!["completion_tokens"]!), (answer.Usage.InputTokenCount, answer.Usage.OutputTokenCount));

        // No template in the folder (the fixture's): 400 in OpenAI's error shape, through the client and as curl sees it.
        var plain = new OpenAI.Chat.ChatClient(ModelId, new ApiKeyCredential(ServeModels.Token), new OpenAI.OpenAIClientOptions { Endpoint = new Uri(fx.Server.Address + "/v1") });
        var refused = await Assert.ThrowsAsync<ClientResultException>(() => plain.CompleteChatAsync([new OpenAI.Chat.UserChatMessage("hi")]));
        Assert.Equal(400, refused.Status);
        using var fixtureHttp = Http(fx.Server.Address);
        (status, body) = await Post(fixtureHttp, "/v1/chat/completions", Completion(new { model = ModelId, messages = new[] { new { role = "user", content = "hi" } } }));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("no chat template", (string?)body!["error"]!["message"], StringComparison.Ordinal);
        Assert.Equal(("invalid_request_error", "messages"), ((string?)body["error"]!["type"], (string?)body["error"]!["param"]));
        // Bad messages on the chat server: 400 naming the field.
        (status, body) = await Post(http, "/v1/chat/completions", Completion(new { model = "tiny-chat", messages = Array.Empty<object>() }));
        Assert.Equal((HttpStatusCode.BadRequest, "messages"), (status, (string?)body!["error"]!["param"]));

        // A template that cannot be rendered: the replica still serves completions; chat gets a 400 saying why.
        using var unusable = ServerProcess.Start("rollout", "--model", fx.Models.ChatFolder("tiny-chat-broken", "{% for m in %}{% endfor %}"), "--threads", "1", "--token-file", fx.Models.TokenFile);
        using var unusableHttp = Http(unusable.Address);
        (status, body) = await Post(unusableHttp, "/v1/chat/completions", Completion(new { model = "tiny-chat-broken", messages = new[] { new { role = "user", content = "hi" } } }));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("chat template cannot be used", (string?)body!["error"]!["message"], StringComparison.Ordinal);
        (status, _) = await Post(unusableHttp, "/v1/completions", Completion(new { model = "tiny-chat-broken", prompt = ids, max_tokens = 2 }));
        Assert.Equal(HttpStatusCode.OK, status);
    }

    [Fact]
    public async Task TheRealQwenTemplateIsServedAsTransformersRendersIt()
    {
        // Qwen2.5-Instruct's own template (tojson, loop.index0, tools branch). The tiny tokenizer gets <|im_start|> and
        // <|im_end|> as added special tokens (on the ids of two bytes the text never holds) so the prompt fits the context.
        string source = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "ChatTemplates", "Qwen2.5-Instruct.jinja"));
        string folder = fx.Models.ChatFolder("tiny-qwen", source);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "tokenizer.json")))!;
        var vocab = json["model"]!["vocab"]!;
        int imStart = (int)vocab[Rlhf.Inference.Tokenization.ByteLevel.ByteToChar(1).ToString()]!, imEnd = (int)vocab[Rlhf.Inference.Tokenization.ByteLevel.ByteToChar(2).ToString()]!;
        foreach (var (content, id) in new[] { ("<|im_start|>", imStart), ("<|im_end|>", imEnd) })
            json["added_tokens"]!.AsArray().Add(new System.Text.Json.Nodes.JsonObject { ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true });
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), json.ToJsonString());
        // and, like Qwen2.5's tokenizer, adds no BOS
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "tokenizer_config.json")))!;
        config["add_bos_token"] = false;
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString());
        using var server = ServerProcess.Start("rollout", "--model", folder, "--threads", "1", "--token-file", fx.Models.TokenFile);
        var tokenizer = Rlhf.Inference.Tokenization.TextTokenizer.Load(folder);
        // What transformers renders for this conversation (the Qwen2.5 fixture's "system" case, other words).
        int[] ids = tokenizer.Encode("<|im_start|>system\nx<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        Assert.Equal(imStart, ids[0]);   // no BOS before the template's text; markers are single ids
        Assert.Equal(3, ids.Count(i => i == imStart));

        using var http = Http(server.Address);
        var (status, chat) = await Post(http, "/v1/chat/completions", Completion(new { model = "tiny-qwen", messages = new[] { new { role = "system", content = "x" }, new { role = "user", content = "hi" } }, max_completion_tokens = 4, temperature = 1.0, seed = 5 }));
        Assert.Equal(HttpStatusCode.OK, status);
        var (status2, plain) = await Post(http, "/v1/completions", Completion(new { model = "tiny-qwen", prompt = ids, max_tokens = 4, temperature = 1.0, seed = 5 }));
        Assert.Equal(HttpStatusCode.OK, status2);
        Assert.Equal((string?)plain!["choices"]![0]!["text"], (string?)chat!["choices"]![0]!["message"]!["content"]);
        Assert.Equal(ids.Length, (int)chat["usage"]!["prompt_tokens"]!);
    }

    [Fact]
    public async Task BadRequestsGet400WithAMessageAndTheServerGoesOnServing()
    {
        using var http = Http(fx.Server.Address);
        string good = Completion(new { model = ModelId, prompt = "the", max_tokens = 2, temperature = 0 });
        string[] bad =
        [
            Completion(new { model = "no-such-model", prompt = "the", max_tokens = 2 }),
            Completion(new { model = ModelId, prompt = "the", max_tokens = -3 }),
            "{\"model\": \"" + ModelId + "\", \"prompt\": ",                                            // malformed JSON
            Completion(new { model = ModelId, prompt = "the", max_tokens = 2, n = 1000 }),              // oversize batch
            Completion(new { model = ModelId, prompt = 42 }),
            Completion(new { model = ModelId, prompt = "the", temperature = -1 }),
            Completion(new { model = ModelId, prompt = "the", max_tokens = fx.Models.Config.MaxPositionEmbeddings }),   // past the context
        ];
        foreach (string b in bad)
        {
            var (status, body) = await Post(http, "/v1/completions", b);
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.False(string.IsNullOrWhiteSpace((string?)body!["error"]!["message"]), b);
            Assert.Equal("invalid_request_error", (string?)body["error"]!["type"]);
            Assert.Equal(HttpStatusCode.OK, (await Post(http, "/v1/completions", good)).Status);   // still serving
        }
        var (_, context) = await Post(http, "/v1/completions", bad[^1]);
        Assert.Contains($"context of {fx.Models.Config.MaxPositionEmbeddings} tokens", (string?)context!["error"]!["message"], StringComparison.Ordinal);
        // Without the token: 401 in the same error shape (and the OpenAI client reports it).
        using var anonymous = Http(fx.Server.Address, token: null);
        var (s401, b401) = await Post(anonymous, "/v1/completions", good);
        Assert.Equal(HttpStatusCode.Unauthorized, s401);
        Assert.Contains("bearer", (string?)b401!["error"]!["message"], StringComparison.OrdinalIgnoreCase);
        var wrongKey = new OpenAI.OpenAIClient(new ApiKeyCredential("wrong"), new OpenAI.OpenAIClientOptions { Endpoint = new Uri(fx.Server.Address + "/v1") });
        var e = await Assert.ThrowsAsync<ClientResultException>(() => wrongKey.GetOpenAIModelClient().GetModelsAsync());
        Assert.Equal(401, e.Status);
        Assert.Equal(HttpStatusCode.OK, (await Post(http, "/v1/completions", good)).Status);
    }

    [Fact]
    public async Task SixteenConcurrentSeededClientsGetTheTokensTheyGetAlone()
    {
        string[] prompts = ["the product", "the service was", "review number", "great"];
        string Request(int i) => Completion(new { model = ModelId, prompt = prompts[i % prompts.Length], max_tokens = 8, temperature = 1.0, seed = 100 + i });
        async Task<string> Text(HttpClient c, int i)
        {
            var (status, body) = await Post(c, "/v1/completions", Request(i));
            Assert.Equal(HttpStatusCode.OK, status);
            return (string)body!["choices"]![0]!["text"]!;
        }
        using var http = Http(fx.Server.Address);
        var alone = new List<string>();
        for (int i = 0; i < 16; i++) alone.Add(await Text(http, i));
        var clients = Enumerable.Range(0, 16).Select(_ => Http(fx.Server.Address)).ToArray();
        try
        {
            string[] together = await Task.WhenAll(clients.Select((c, i) => Task.Run(() => Text(c, i))));
            Assert.Equal(alone, together);
        }
        finally
        {
            foreach (var c in clients) c.Dispose();
        }
        Assert.True(alone.Distinct().Count() > 1);   // the seeds matter
    }

    [Fact]
    public async Task PushWeightsThenGenerateGivesTheNewWeightsTokensAndVersion()
    {
        using var server = ServerProcess.Start("rollout", "--model", fx.Models.Policy, "--threads", "1", "--token-file", fx.Models.TokenFile);
        using var remote = new RemoteRollouts(server.Address, ServeModels.Token);
        var call = new RolloutCall { Timeout = CallTimeout };
        var requests = new[] { "the product", "slow", "the service was" }
            .Select((p, i) => RolloutRequest.FromText(p, new SamplingOptions { Temperature = 1, MaxNewTokens = 8, Seed = (ulong)i + 1 })).ToList();

        // grpc.health.v1 answers without the token.
        using (var channel = GrpcChannel.ForAddress(server.Address))
        {
            var health = await new Health.HealthClient(channel).CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow + CallTimeout);
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);
            // Generate without the token: UNAUTHENTICATED.
            var anonymous = new Rlhf.Inference.Serving.Protocol.Rollout.RolloutClient(channel);
            var denied = await Assert.ThrowsAsync<RpcException>(() => anonymous.GetStatusAsync(new(), deadline: DateTime.UtcNow + CallTimeout).ResponseAsync);
            Assert.Equal(StatusCode.Unauthenticated, denied.StatusCode);
        }

        var before = await remote.GenerateAsync(requests, call with { RequiredVersion = 0 });
        Assert.All(before, r => Assert.Equal(0UL, r.WeightsVersion));

        // Push the other policy's weights as version 1 (the format the replica's graph declares: packed q/k/v for the GQA graph).
        Assert.Equal(new PolicyWeightFormat(PackedQkv: true, Int8: false), remote.WeightFormat);
        InferenceServices.Sync(remote, fx.Models.Other, 1);
        Assert.Equal(1UL, remote.WeightsVersion);
        var after = await remote.GenerateAsync(requests, call with { RequiredVersion = 1 });
        Assert.All(after, r => Assert.Equal(1UL, r.WeightsVersion));

        // The same requests in process on an engine given the same weights.
        using var engine = RolloutEngine.Load(fx.Models.Policy, new RolloutEngineOptions { Threads = 1, MaxBatchSize = 64 });
        Assert.Equal(before.Select(r => r.ResponseIds), engine.Generate(requests).Select(r => r.ResponseIds));
        InferenceServices.Sync(engine, fx.Models.Other, 1);
        var expected = engine.Generate(requests);
        Assert.Equal(expected.Select(r => r.ResponseIds), after.Select(r => r.ResponseIds));
        Assert.Equal(expected.Select(r => r.LogProbs), after.Select(r => r.LogProbs));
        Assert.NotEqual(before.Select(r => r.ResponseIds), after.Select(r => r.ResponseIds));

        // A stale required version: FAILED_PRECONDITION (the client raises it as a version mismatch).
        var stale = await Assert.ThrowsAsync<WeightsVersionMismatchException>(() => remote.GenerateAsync(requests, call with { RequiredVersion = 0 }));
        Assert.Equal((0UL, 1UL), (stale.Required, stale.Loaded));
        using (var channel = GrpcChannel.ForAddress(server.Address))
        {
            var raw = new Rlhf.Inference.Serving.Protocol.Rollout.RolloutClient(channel);
            var req = new Rlhf.Inference.Serving.Protocol.GenerateRequest { RequiredVersion = 0 };
            req.Requests.Add(ProtocolMapping.ToProto(requests[0]));
            var e = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                using var s = raw.Generate(req, new Metadata { { "authorization", "Bearer " + ServeModels.Token } }, DateTime.UtcNow + CallTimeout);
                while (await s.ResponseStream.MoveNext(CancellationToken.None)) { }
            });
            Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        }
        // A push whose bytes do not match its hash (DATA_LOSS) or whose chunk is over 1 MiB (INVALID_ARGUMENT) changes nothing.
        using (var channel = GrpcChannel.ForAddress(server.Address))
        {
            var raw = new Rlhf.Inference.Serving.Protocol.Rollout.RolloutClient(channel);
            var headers = new Metadata { { "authorization", "Bearer " + ServeModels.Token } };
            var layout = remote.WeightLayout.First(kv => kv.Key.EndsWith("norm.weight", StringComparison.Ordinal));
            long bytes = layout.Value.Aggregate(1L, (x, d) => x * d) * sizeof(float);
            async Task<StatusCode> Push(string sha, int chunkBytes)
            {
                using var push = raw.PushWeights(headers, DateTime.UtcNow + CallTimeout);
                var manifest = new Rlhf.Inference.Serving.Protocol.WeightsManifest { Version = 9, Sha256 = sha };
                manifest.Tensors.Add(ProtocolMapping.ToProto(new WeightTensorInfo(layout.Key, WeightTensorInfo.Float32, layout.Value, bytes)));
                try
                {
                    await push.RequestStream.WriteAsync(new() { Manifest = manifest });
                    await push.RequestStream.WriteAsync(new() { Data = Google.Protobuf.ByteString.CopyFrom(new byte[chunkBytes]) });
                    await push.RequestStream.CompleteAsync();
                    await push;
                    return StatusCode.OK;
                }
                catch (RpcException e) { return e.StatusCode; }
            }
            Assert.Equal(StatusCode.DataLoss, await Push(new string('0', 64), (int)bytes));
            Assert.Equal(StatusCode.InvalidArgument, await Push(new string('0', 64), (1 << 20) + 1));
        }
        var status = await remote.StatusAsync();
        Assert.Equal((1UL, ModelId, "ort"), (status.WeightsVersion, status.Model, status.Engine));
        Assert.Equal(after.Select(r => r.ResponseIds), (await remote.GenerateAsync(requests, call with { RequiredVersion = 1 })).Select(r => r.ResponseIds));
    }

    [Fact]
    public async Task GetRewardFollowsOpenRlhfsContract()
    {
        using var server = ServerProcess.Start("reward", "--reward-model", fx.Models.Reward, "--threads", "1", "--token-file", fx.Models.TokenFile);
        using var http = Http(server.Address);
        string[] prompts = ["the product", "the service"];
        string[] responses = ["was great.", "was slow and bad."];
        string[] queries = [.. prompts.Select((p, i) => p + " " + responses[i])];
        var (status, body) = await Post(http, "/get_reward", JsonSerializer.Serialize(new { query = queries, prompts }));
        Assert.Equal(HttpStatusCode.OK, status);
        float[] rewards = [.. body!["rewards"]!.AsArray().Select(x => (float)x!)];
        using var scorer = RewardScorer.Load(fx.Models.Reward, new RewardScorerOptions { Threads = 1 });
        Assert.Equal(scorer.Score([.. prompts.Select((p, i) => new RewardRequest(p, responses[i]))]), rewards);
        Assert.Equal(rewards, body["scores"]!.AsArray().Select(x => (float)x!));
        // without prompts each query is one text, scored as `rlhf score` scores a text with an empty prompt
        (status, body) = await Post(http, "/get_reward", JsonSerializer.Serialize(new { query = queries }));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(scorer.Score([.. queries.Select(q => new RewardRequest("", q))]), body!["rewards"]!.AsArray().Select(x => (float)x!));

        foreach (string bad in new[]
        {
            "{\"prompts\": [\"a\"]}",                                                          // no query
            JsonSerializer.Serialize(new { query = queries, prompts = new[] { "the product" } }),  // one prompt per query
            JsonSerializer.Serialize(new { query = queries, prompts = new[] { "x", "y" } }),       // not a prefix
            "[1, 2",                                                                            // malformed JSON
        })
        {
            var (s, b) = await Post(http, "/get_reward", bad);
            Assert.Equal(HttpStatusCode.BadRequest, s);
            Assert.False(string.IsNullOrWhiteSpace((string?)b!["error"]!["message"]), bad);
            Assert.Equal(HttpStatusCode.OK, (await Post(http, "/get_reward", JsonSerializer.Serialize(new { query = queries }))).Status);
        }
    }

    [Fact]
    public void TheDocsPageNamesEveryServeOption()
    {
        string page = Common.DocsPages.Docs("serving.md");
        string section = Common.DocsPages.Section(page, "# Inference as a service");
        foreach (var command in ServeCommand.Create().Subcommands)
        {
            Assert.Contains($"serve {command.Name} ", section, StringComparison.Ordinal);
            foreach (var option in command.Options)
                Assert.True(section.Contains(option.Name, StringComparison.Ordinal), $"docs/serving.md lacks serve {command.Name} {option.Name}");
        }
        Assert.Contains("docs/serving.md", Common.DocsPages.Readme(), StringComparison.Ordinal);   // the README links the page
    }

    [Fact]
    public void TheServerExecutableHasNoTorchSharpInItsDependencyGraph()
    {
        string deps = File.ReadAllText(Path.ChangeExtension(ServerProcess.ServerDll, ".deps.json"));
        Assert.Contains("Microsoft.ML.OnnxRuntime", deps, StringComparison.Ordinal);
        Assert.DoesNotContain("TorchSharp", deps, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("libtorch", deps, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("Rlhf.Training", deps, StringComparison.Ordinal);
        Assert.DoesNotContain("Rlhf.Export", deps, StringComparison.Ordinal);
    }
}
