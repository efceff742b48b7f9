using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.Http.Resilience;
using Polly;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Serving;

/// <summary>
/// An external reward server that speaks OpenRLHF's remote-RM contract: <c>POST {url}</c> with
/// <c>{"query": [prompt + response, ...], "prompts": [prompt, ...]}</c> answered by <c>{"rewards": [...]}</c>. Each query
/// is <see cref="PromptFormat.Join"/> of its pair. Every attempt has a deadline; failures that may pass (connection
/// refused, timeout, 408, 429, 5xx) are retried with exponential backoff and jitter, honouring <c>Retry-After</c>,
/// through Microsoft.Extensions.Http.Resilience, a bounded number of times; then the error names the URL.
/// </summary>
public sealed class OpenRlhfRewards : IRewardService
{
    readonly HttpClient _http;
    readonly CountingHandler _attempts = new() { InnerHandler = new SocketsHttpHandler() };
    readonly Lock _gate = new();

    /// <summary>Counts the attempts that reach the network (below the retry handler).</summary>
    sealed class CountingHandler : DelegatingHandler
    {
        public int Count;
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Count);
            return base.SendAsync(request, cancellationToken);
        }
    }

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
        var pipeline = new ResiliencePipelineBuilder<HttpResponseMessage>()
            .AddRetry(new HttpRetryStrategyOptions
            {
                MaxRetryAttempts = attempts - 1, BackoffType = DelayBackoffType.Exponential, UseJitter = true, Delay = TimeSpan.FromMilliseconds(200),
                MaxDelay = TimeSpan.FromSeconds(10),   // a Retry-After longer than this still waits this long at most
            })
            .AddTimeout(new HttpTimeoutStrategyOptions { Timeout = callTimeout })   // per attempt
            .Build();
        _http = new HttpClient(new ResilienceHandler(pipeline) { InnerHandler = _attempts }) { Timeout = Timeout.InfiniteTimeSpan };
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
        prompts = requests.Select(r => r.Prompt).ToArray(),
    };

    /// <inheritdoc/>
    public float[] Score(IReadOnlyList<RewardRequest> requests)
    {
        ArgumentNullException.ThrowIfNull(requests);
        if (requests.Count == 0) return [];
        var body = Body(requests);
        lock (_gate)
        {
            _attempts.Count = 0;
            string problem;
            try
            {
                using var response = _http.PostAsJsonAsync(Url, body).GetAwaiter().GetResult();
                string text = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
                if (response.IsSuccessStatusCode) return Parse(text, requests.Count);
                problem = $"HTTP {(int)response.StatusCode}: {Shorten(text)}";
                if (!Retried((int)response.StatusCode)) throw new InvalidOperationException($"Reward server {Url} refused the request ({problem}).");
            }
            catch (HttpRequestException e) { problem = e.Message; }
            catch (Polly.Timeout.TimeoutRejectedException) { problem = $"no answer within {CallTimeout.TotalSeconds:0.###} s"; }
            throw new InvalidOperationException($"Reward server {Url} failed after {_attempts.Count} attempt(s): {problem}. Check that it is running and reachable.");
        }
    }

    /// <summary>Statuses the retry strategy retries (transient): 408, 429 and every 5xx.</summary>
    static bool Retried(int status) => status is 408 or 429 or >= 500;

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
    public void Dispose() => _http.Dispose();   // disposes the handler chain
}
