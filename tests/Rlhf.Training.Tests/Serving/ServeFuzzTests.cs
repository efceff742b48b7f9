using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// Malformed requests against real <c>rlhf-serve rollout</c> (with a chat template) and <c>rlhf-serve reward</c>
/// processes on 127.0.0.1: random bytes, wrong JSON types in every field, deep nesting, invalid UTF-8 inside strings,
/// oversized prompts, wrong methods and content types, from a fixed seed. None may get a 5xx, each JSON error is
/// OpenAI's error object, the servers stay up and a good request's answer is the same before and after.
/// </summary>
public sealed class ServeFuzzTests
{
    static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(60);

    static HttpClient Http(string address)
    {
        var c = new HttpClient { BaseAddress = new Uri(address), Timeout = CallTimeout };
        c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ServeModels.Token);
        return c;
    }

    /// <summary>A JSON value of a random kind (some of them deep), as text.</summary>
    static string RandomValue(Random rng, int depth = 0) => rng.Next(depth > 2 ? 6 : 9) switch
    {
        0 => "null",
        1 => rng.Next(2) == 0 ? "true" : "false",
        2 => (rng.NextDouble() * 2e6 - 1e6).ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        3 => rng.Next(int.MinValue, int.MaxValue).ToString(System.Globalization.CultureInfo.InvariantCulture),
        4 => "\"" + new string('x', rng.Next(0, 40)) + "\"",
        5 => "1e999",
        6 => "[" + string.Join(",", Enumerable.Range(0, rng.Next(0, 4)).Select(_ => RandomValue(rng, depth + 1))) + "]",
        7 => "{" + string.Join(",", Enumerable.Range(0, rng.Next(0, 3)).Select(i => $"\"k{i}\":" + RandomValue(rng, depth + 1))) + "}",
        _ => "[[[[" + RandomValue(rng, depth + 1) + "]]]]",
    };

    /// <summary>Malformed bodies for a route whose good body is <paramref name="good"/> (its fields get wrong values one at a time).</summary>
    static IEnumerable<byte[]> MalformedBodies(Random rng, JsonObject good, int count)
    {
        string[] fields = [.. good.Select(p => p.Key), "n", "seed", "stop", "logprobs", "top_logprobs", "top_k", "top_p", "stream", "stream_options", "messages", "prompt", "query", "prompts"];
        for (int i = 0; i < count; i++)
        {
            switch (i % 8)
            {
                case 0:   // random bytes
                    var bytes = new byte[rng.Next(0, 400)];
                    rng.NextBytes(bytes);
                    yield return bytes;
                    break;
                case 1:
                case 2:
                case 3:   // one field of the good body with a value of the wrong kind
                    var o = good.DeepClone().AsObject();
                    string f = fields[rng.Next(fields.Length)];
                    o[f] = JsonNode.Parse(RandomValue(rng));
                    yield return Encoding.UTF8.GetBytes(o.ToJsonString());
                    break;
                case 4:   // deep nesting
                    int depth = rng.Next(65, 5000);
                    yield return Encoding.UTF8.GetBytes(new string('[', depth) + new string(']', depth));
                    break;
                case 5:   // invalid UTF-8 inside a string of a good body
                    string text = good.ToJsonString();
                    int quote = text.IndexOf(":\"", StringComparison.Ordinal);
                    var prefix = Encoding.UTF8.GetBytes(quote < 0 ? "{\"model\":\"" : text[..(quote + 2)]);
                    yield return [.. prefix, 0xff, 0xfe, 0xc3, (byte)'"', (byte)'}'];
                    break;
                case 6:   // a non-object root or a truncated body
                    string[] roots = ["[]", "\"text\"", "42", "null", good.ToJsonString()[..^1], "{\"model\":", "{", ""];
                    yield return Encoding.UTF8.GetBytes(roots[rng.Next(roots.Length)]);
                    break;
                default:  // an oversized prompt or query (far past the model's context)
                    var big = good.DeepClone().AsObject();
                    string huge = string.Concat(Enumerable.Repeat("the product was great ", rng.Next(2000, 20000)));
                    if (big.ContainsKey("query")) big["query"] = new JsonArray(huge);
                    else if (big.ContainsKey("messages")) big["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = huge });
                    else big["prompt"] = huge;
                    yield return Encoding.UTF8.GetBytes(big.ToJsonString());
                    break;
            }
        }
    }

    static async Task<(HttpStatusCode Status, string Body)> Send(HttpClient http, HttpMethod method, string path, byte[]? body, string contentType = "application/json")
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null)
        {
            request.Content = new ByteArrayContent(body);
            request.Content.Headers.ContentType = new MediaTypeHeaderValue(contentType);
        }
        using var response = await http.SendAsync(request);
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    static async Task Fuzz(HttpClient http, string path, JsonObject good, Random rng, int count, List<string> failures)
    {
        foreach (var body in MalformedBodies(rng, good, count))
        {
            var (status, text) = await Send(http, HttpMethod.Post, path, body);
            if ((int)status >= 500) failures.Add($"{path} {(int)status} for {Preview(body)}: {text}");
            else if ((int)status >= 400 && !IsErrorObject(text)) failures.Add($"{path} {(int)status} without an error object for {Preview(body)}: {text}");
        }
        foreach (var method in new[] { HttpMethod.Get, HttpMethod.Put, HttpMethod.Delete, HttpMethod.Patch })
        {
            var (status, text) = await Send(http, method, path, method == HttpMethod.Get ? null : Encoding.UTF8.GetBytes(good.ToJsonString()));
            if ((int)status is < 400 or >= 500) failures.Add($"{method} {path}: {(int)status} {text}");
        }
        var (s, t) = await Send(http, HttpMethod.Post, path, Encoding.UTF8.GetBytes(good.ToJsonString()[..^1]), "text/plain");
        if ((int)s >= 500) failures.Add($"{path} text/plain: {(int)s} {t}");
    }

    static bool IsErrorObject(string text)
    {
        try { return JsonNode.Parse(text)?["error"]?["message"] is JsonValue; }
        catch (System.Text.Json.JsonException) { return false; }
    }

    static string Preview(byte[] body) => body.Length > 80 ? Convert.ToHexString(body[..40]) + $"… ({body.Length} bytes)" : Convert.ToHexString(body);

    [Fact]
    public async Task MalformedRequestsGet4xxAndTheServersGoOnServing()
    {
        using var models = new ServeModels();
        // the policy folder with a chat template, so that chat requests reach the parsing of their messages
        string chat = models.ChatFolder("chat-policy",
            "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}");

        using var rollout = ServerProcess.Start("rollout", "--model", chat, "--threads", "1", "--token-file", models.TokenFile);
        using var reward = ServerProcess.Start("reward", "--reward-model", models.Reward, "--threads", "1", "--token-file", models.TokenFile);
        using var rolloutHttp = Http(rollout.Address);
        using var rewardHttp = Http(reward.Address);
        var completion = new JsonObject { ["model"] = "chat-policy", ["prompt"] = "the product", ["max_tokens"] = 6, ["temperature"] = 0 };
        var chatCompletion = new JsonObject { ["model"] = "chat-policy", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "the product" }), ["max_tokens"] = 6, ["temperature"] = 0 };
        var getReward = new JsonObject { ["query"] = new JsonArray("the product was great", "the service was slow") };

        async Task<string[]> GoodAnswers() =>
        [
            (await Send(rolloutHttp, HttpMethod.Post, "/v1/completions", Encoding.UTF8.GetBytes(completion.ToJsonString()))).Body,
            (await Send(rolloutHttp, HttpMethod.Post, "/v1/chat/completions", Encoding.UTF8.GetBytes(chatCompletion.ToJsonString()))).Body,
            (await Send(rewardHttp, HttpMethod.Post, "/get_reward", Encoding.UTF8.GetBytes(getReward.ToJsonString()))).Body,
        ];
        string[] before = await GoodAnswers();
        Assert.All(before, b => Assert.False(IsErrorObject(b), b));

        var rng = new Random(20261206);
        var failures = new List<string>();
        await Fuzz(rolloutHttp, "/v1/completions", completion, rng, 200, failures);
        await Fuzz(rolloutHttp, "/v1/chat/completions", chatCompletion, rng, 200, failures);
        await Fuzz(rewardHttp, "/get_reward", getReward, rng, 200, failures);
        Assert.True(failures.Count == 0, $"{failures.Count} bad answers:\n" + string.Join("\n", failures.Take(20)));

        string[] after = await GoodAnswers();
        // the same answers: drop the fields that differ per call (ids, creation time)
        static string Stable(string json)
        {
            var o = JsonNode.Parse(json)!.AsObject();
            o.Remove("id");
            o.Remove("created");
            return o.ToJsonString();
        }
        Assert.Equal(before.Select(Stable), after.Select(Stable));
    }
}
