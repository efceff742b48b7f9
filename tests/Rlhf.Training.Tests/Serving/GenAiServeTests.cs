using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Inference.Rollout;

namespace Rlhf.Training.Tests.Serving;

/// <summary>A rollout replica on ONNX Runtime GenAI (<c>rlhf-serve rollout --engine genai</c>) answers as the in-process GenAI engine.</summary>
public sealed class GenAiServeTests
{
    [Fact]
    public async Task GenAiReplicaServesTheInProcessGenAiEnginesCompletions()
    {
        using var models = new ServeModels();
        using var server = ServerProcess.Start("rollout", "--model", models.Policy, "--threads", "1", "--engine", "genai", "--token-file", models.TokenFile);
        using var http = new HttpClient { BaseAddress = new Uri(server.Address), Timeout = TimeSpan.FromSeconds(60) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ServeModels.Token);
        string model = Path.GetFileName(models.Policy);
        using var engine = GenAiRolloutEngine.Load(models.Policy, new GenAiEngineOptions { Threads = 1 });

        async Task<JsonNode> Complete(object body)
        {
            using var r = await http.PostAsync("/v1/completions", new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"));
            string text = await r.Content.ReadAsStringAsync();
            Assert.True(r.StatusCode == HttpStatusCode.OK, text);
            return JsonNode.Parse(text)!;
        }

        var greedy = await Complete(new { model, prompt = "the product", max_tokens = 8, temperature = 0, logprobs = 1 });
        var expected = engine.Generate([RolloutRequest.FromText("the product", new SamplingOptions { Temperature = 0, MaxNewTokens = 8 })])[0];
        var choice = greedy["choices"]![0]!;
        Assert.Equal(expected.Text, (string?)choice["text"]);
        float[] lps = [.. choice["logprobs"]!["token_logprobs"]!.AsArray().Select(x => (float)x!)];
        Assert.Equal(expected.LogProbs, lps);

        // Sampled: the replica cuts the same chunk from the same requests, so the chunk seed and the tokens agree.
        var sampled = await Complete(new { model, prompt = "the product", max_tokens = 6, n = 3, seed = 5, temperature = 1.0 });
        var again = engine.Generate([.. Enumerable.Range(0, 3).Select(k => RolloutRequest.FromText("the product",
            new SamplingOptions { Temperature = 1, MaxNewTokens = 6, Seed = 5UL + (ulong)k }))]);
        Assert.Equal(again.Select(r => r.Text), sampled["choices"]!.AsArray().Select(c => (string?)c!["text"]));
    }
}
