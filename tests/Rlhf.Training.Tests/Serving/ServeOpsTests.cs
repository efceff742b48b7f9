using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// What an operator checks first, on real <c>rlhf-serve</c> processes on 127.0.0.1: liveness, readiness, Prometheus
/// metrics that move with the requests, and a SIGTERM that lets the call in flight finish.
/// </summary>
public sealed class ServeOpsTests
{
    static HttpClient Http(string address, bool token = true)
    {
        var c = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(60) };
        if (token) c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ServeModels.Token);
        return c;
    }

    /// <summary>The value of a Prometheus sample whose name and labels match <paramref name="pattern"/> (0 when absent).</summary>
    static double Sample(string metrics, string pattern)
    {
        var m = Regex.Match(metrics, "^" + pattern + @" (?<value>[0-9.eE+-]+)", RegexOptions.Multiline);
        return m.Success ? double.Parse(m.Groups["value"].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
    }

    static Task<HttpResponseMessage> Complete(HttpClient http, string model, int n, int maxTokens) =>
        http.PostAsync("/v1/completions", new StringContent(
            new JsonObject { ["model"] = model, ["prompt"] = "the product", ["max_tokens"] = maxTokens, ["n"] = n, ["temperature"] = 1.0, ["seed"] = 3 }.ToJsonString(),
            Encoding.UTF8, "application/json"));

    [Fact]
    public async Task HealthReadyAndMetricsAnswerAndTheCountersMove()
    {
        using var models = new ServeModels();
        using var server = ServerProcess.Start("rollout", "--model", models.Policy, "--threads", "1", "--token-file", models.TokenFile);
        using var anonymous = Http(server.Address, token: false);
        using var http = Http(server.Address);
        // probes and scrapes need no token; everything else still does
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/health")).StatusCode);
        var ready = JsonNode.Parse(await anonymous.GetStringAsync("/ready"))!;
        Assert.True((bool)ready["ready"]!);
        Assert.Equal(0UL, (ulong)ready["weights_version"]!);
        Assert.Equal("tiny-policy", (string)ready["model"]!);
        Assert.Equal(HttpStatusCode.Unauthorized, (await Complete(anonymous, "tiny-policy", 1, 4)).StatusCode);

        string before = await anonymous.GetStringAsync("/metrics");
        using (var r = await Complete(http, "tiny-policy", 3, 5)) Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        using (var r = await http.PostAsync("/v1/completions", new StringContent("{", Encoding.UTF8, "application/json"))) Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        string after = await anonymous.GetStringAsync("/metrics");
        Assert.Equal(1, Sample(after, @"rlhf_requests_total\{[^}]*route=""/v1/completions""[^}]*status=""200""[^}]*\}") -
                        Sample(before, @"rlhf_requests_total\{[^}]*route=""/v1/completions""[^}]*status=""200""[^}]*\}"));
        Assert.Equal(1, Sample(after, @"rlhf_requests_total\{[^}]*route=""/v1/completions""[^}]*status=""400""[^}]*\}"));
        Assert.Equal(1, Sample(after, @"rlhf_batch_size_count(\{[^}]*\})?") - Sample(before, @"rlhf_batch_size_count(\{[^}]*\})?"));
        double tokensOut = Sample(after, @"rlhf_tokens_out(_total)?(\{[^}]*\})?") - Sample(before, @"rlhf_tokens_out(_total)?(\{[^}]*\})?");
        Assert.InRange(tokensOut, 3, 15);   // three samples of at most five tokens
        Assert.Contains("rlhf_time_to_first_token", after);
        Assert.Contains("rlhf_weights_version", after);
    }

    [Fact]
    public async Task SigtermLetsTheCallInFlightFinishThenExits()
    {
        using var models = new ServeModels();
        using var server = ServerProcess.Start("rollout", "--model", models.Policy, "--threads", "1");
        using var http = Http(server.Address, token: false);
        // a streamed answer of 256 choices × 58 tokens (megabytes of events): after its first event the call is provably
        // in flight, since the server cannot have written the rest into the socket's buffers before the client reads it
        var body = new JsonObject { ["model"] = "tiny-policy", ["prompt"] = "the product", ["max_tokens"] = 58, ["n"] = 256, ["seed"] = 3, ["stream"] = true };
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        Assert.StartsWith("data: ", await reader.ReadLineAsync());
        server.Terminate();
        var finished = new HashSet<int>();
        string? last = null;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            last = line;
            if (line == "data: [DONE]") break;
            var choice = JsonNode.Parse(line[6..])!["choices"]![0]!;
            if (choice["finish_reason"] is JsonValue) finished.Add((int)choice["index"]!);
        }
        Assert.Equal("data: [DONE]", last);
        Assert.Equal(256, finished.Count);   // every choice ended normally after the SIGTERM
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task JsonLogsAreOneObjectPerLineWithARequestLog()
    {
        using var models = new ServeModels();
        using var server = ServerProcess.Start("reward", "--reward-model", models.Reward, "--threads", "1", "--log-format", "json");
        using var http = Http(server.Address, token: false);
        using (var r = await http.PostAsync("/get_reward", new StringContent("{\"query\": [\"the product was great\"]}", Encoding.UTF8, "application/json")))
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        server.Terminate();
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromSeconds(30)));
        string[] lines = [.. server.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];
        Assert.NotEmpty(lines);
        var logs = lines.Select(l => JsonNode.Parse(l)!).ToList();   // every line is a JSON object
        Assert.Contains(logs, l => ((string?)l["Message"])?.Contains("listening on", StringComparison.Ordinal) == true);
        Assert.Contains(logs, l => (string?)l["Category"] == "Rlhf.Serve.Requests" && (string?)l["State"]?["Route"] == "/get_reward" && (int?)l["State"]?["Status"] == 200);
    }
}
