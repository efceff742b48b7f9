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
        var inFlight = Complete(http, "tiny-policy", 256, 60);
        // wait (bounded) until the call is in the engine, as /ready reports it
        var end = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while ((int)JsonNode.Parse(await http.GetStringAsync("/ready"))!["queued"]! == 0)
        {
            Assert.True(DateTime.UtcNow < end, "the call never reached the engine");
            await Task.Delay(5);
        }
        server.Terminate();
        using var response = await inFlight;
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(256, JsonNode.Parse(await response.Content.ReadAsStringAsync())!["choices"]!.AsArray().Count);
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromSeconds(30)));
    }
}
