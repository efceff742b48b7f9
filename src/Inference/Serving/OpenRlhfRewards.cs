using System.Net.Http.Json;
using System.Text.Json;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Serving;

/// <summary>
/// An external reward server that speaks OpenRLHF's remote-RM contract: <c>POST {url}</c> with
/// <c>{"query": [prompt + response, ...], "prompts": [prompt, ...]}</c> answered by <c>{"rewards": [...]}</c>. Each query
/// is <see cref="PromptFormat.Join"/> of its pair. Every call has a deadline; failures that may pass (connection
/// refused, timeout, 5xx) are retried a bounded number of times, then the error names the URL.
/// </summary>
public sealed class OpenRlhfRewards : IRewardService
{
    readonly HttpClient _http;

    /// <summary>A client for <paramref name="url"/> (the full address of the endpoint, e.g. http://host:5000/get_reward).</summary>
    public OpenRlhfRewards(string url, string? token, TimeSpan callTimeout, int attempts = 3)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new ArgumentException($"'{url}' is not a reward server URL; give http://host:port/get_reward.");
        if (attempts < 1) throw new ArgumentException($"attempts must be >= 1; got {attempts}.");
        if (callTimeout <= TimeSpan.Zero) throw new ArgumentException($"The call deadline must be positive; got {callTimeout}.");
        Url = uri;
        CallTimeout = callTimeout;
        Attempts = attempts;
        _http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };   // each call has its own deadline
        if (token is not null) _http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
    }

    /// <summary>The endpoint.</summary>
    public Uri Url { get; }
    /// <summary>Deadline of one call.</summary>
    public TimeSpan CallTimeout { get; }
    /// <summary>Calls before giving up.</summary>
    public int Attempts { get; }

    /// <summary>The request body for <paramref name="requests"/>: queries are prompt + response as one text.</summary>
    public static object Body(IReadOnlyList<RewardRequest> requests) => new
    {
        query = requests.Select(r => PromptFormat.Join(r.Prompt, r.Response)).ToArray(),
        prompts = requests.Select(r => r.Prompt.TrimEnd()).ToArray(),
    };

    /// <inheritdoc/>
    public float[] Score(IReadOnlyList<RewardRequest> requests)
    {
        ArgumentNullException.ThrowIfNull(requests);
        if (requests.Count == 0) return [];
        var body = Body(requests);
        for (int attempt = 1; ; attempt++)
        {
            string problem;
            try
            {
                using var cts = new CancellationTokenSource(CallTimeout);
                using var response = _http.PostAsJsonAsync(Url, body, cts.Token).GetAwaiter().GetResult();
                string text = response.Content.ReadAsStringAsync(cts.Token).GetAwaiter().GetResult();
                if (response.IsSuccessStatusCode) return Parse(text, requests.Count);
                problem = $"HTTP {(int)response.StatusCode}: {Shorten(text)}";
                if ((int)response.StatusCode < 500) throw new InvalidOperationException($"Reward server {Url} refused the request ({problem}).");
            }
            catch (HttpRequestException e) { problem = e.Message; }
            catch (TaskCanceledException) { problem = $"no answer within {CallTimeout.TotalSeconds:0.###} s"; }
            if (attempt >= Attempts)
                throw new InvalidOperationException($"Reward server {Url} failed after {attempt} attempt(s): {problem}. Check that it is running and reachable.");
            Thread.Sleep(TimeSpan.FromMilliseconds(200 * attempt));
        }
    }

    float[] Parse(string text, int expected)
    {
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (!doc.RootElement.TryGetProperty("rewards", out var rewards) || rewards.ValueKind != JsonValueKind.Array)
                throw new InvalidDataException($"Reward server {Url} answered without a \"rewards\" array: {Shorten(text)}");
            float[] scores = [.. rewards.EnumerateArray().Select(x => (float)x.GetDouble())];
            if (scores.Length != expected) throw new InvalidDataException($"Reward server {Url} returned {scores.Length} rewards for {expected} queries.");
            return scores;
        }
        catch (JsonException e) { throw new InvalidDataException($"Reward server {Url} answered with invalid JSON ({e.Message}): {Shorten(text)}"); }
        catch (InvalidOperationException e) { throw new InvalidDataException($"Reward server {Url} answered with a non-number reward ({e.Message})."); }
    }

    static string Shorten(string s) => s.Length <= 200 ? s : s[..200] + "…";

    /// <summary>Frees the HTTP client.</summary>
    public void Dispose() => _http.Dispose();
}
