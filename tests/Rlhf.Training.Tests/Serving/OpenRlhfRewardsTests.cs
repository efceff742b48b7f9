using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.Tests.Ppo;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// <c>reward_url</c>: PPO scores through an external server that speaks OpenRLHF's remote-RM contract (here our own
/// <c>rlhf-serve reward</c> process), with deadlines, bounded retries and errors that name the URL.
/// </summary>
public sealed class OpenRlhfRewardsTests
{
    static readonly RewardRequest[] Pairs =
        [new("the product", "was great"), new("the service was ", " slow, review number 3."), new("", "the product 4 was great")];

    [Fact]
    public void ScoresThroughGetRewardEqualTheInProcessScorer()
    {
        using var models = new ServeModels();
        using var server = ServerProcess.Start("reward", "--reward-model", models.Reward, "--threads", "1", "--token-file", models.TokenFile);
        using var remote = new OpenRlhfRewards(server.Address + "/get_reward", ServeModels.Token, TimeSpan.FromSeconds(60));
        using var local = RewardScorer.Load(models.Reward, new RewardScorerOptions { Threads = 1 });
        Assert.Equal(local.Score(Pairs), remote.Score(Pairs));

        // The body as OpenRLHF sends it: each query is the prompt followed by its response, with the prompts beside them.
        var body = JsonSerializer.SerializeToElement(OpenRlhfRewards.Body(Pairs));
        Assert.Equal("the product was great", body.GetProperty("query")[0].GetString());
        Assert.Equal("the service was slow, review number 3.", body.GetProperty("query")[1].GetString());
        Assert.Equal("the service was ", body.GetProperty("prompts")[1].GetString());

        // A wrong token is refused at once (no retry), with the URL and the status in the message.
        using var wrong = new OpenRlhfRewards(server.Address + "/get_reward", "not-the-token", TimeSpan.FromSeconds(60));
        var e = Assert.Throws<InvalidOperationException>(() => wrong.Score(Pairs));
        Assert.Contains("/get_reward", e.Message);
        Assert.Contains("HTTP 401", e.Message);
    }

    [Fact]
    public void AServerThatStaysDownEndsAfterBoundedRetriesNamingTheUrl()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();   // nothing listens there now
        string url = $"http://127.0.0.1:{port}/get_reward";
        using var down = new OpenRlhfRewards(url, null, TimeSpan.FromSeconds(5), attempts: 2);
        var e = Assert.Throws<InvalidOperationException>(() => down.Score(Pairs));
        Assert.Contains(url, e.Message);
        Assert.Contains("after 2 attempt(s)", e.Message);
        Assert.Throws<ArgumentException>(() => new OpenRlhfRewards("ftp://127.0.0.1/x", null, TimeSpan.FromSeconds(1)));
    }

    /// <summary>A loopback HTTP server that answers each request with the next (status, headers, body) of <paramref name="script"/>.</summary>
    sealed class ScriptedServer : IDisposable
    {
        readonly HttpListener _listener = new();
        readonly Task _loop;
        public int Requests;
        public string Url { get; }

        public ScriptedServer(params (int Status, string? RetryAfter, string Body)[] script)
        {
            using var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            int port = ((IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            Url = $"http://127.0.0.1:{port}/get_reward";
            _listener.Prefixes.Add($"http://127.0.0.1:{port}/");
            _listener.Start();
            _loop = Task.Run(async () =>
            {
                foreach (var (status, retryAfter, body) in script)
                {
                    var ctx = await _listener.GetContextAsync();
                    Interlocked.Increment(ref Requests);
                    ctx.Response.StatusCode = status;
                    if (retryAfter is not null) ctx.Response.Headers["Retry-After"] = retryAfter;
                    byte[] bytes = System.Text.Encoding.UTF8.GetBytes(body);
                    await ctx.Response.OutputStream.WriteAsync(bytes);
                    ctx.Response.Close();
                }
            });
        }

        public void Dispose()
        {
            _listener.Close();
            try { _loop.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
        }
    }

    [Fact]
    public void TransientAnswersAreRetriedWithBackoffAndRetryAfterOthersAreNot()
    {
        // 503, then 429 asking for 1 s, then the answer: three attempts, the second wait at least the Retry-After
        using (var flaky = new ScriptedServer((503, null, "busy"), (429, "1", "slow down"), (200, null, "{\"rewards\": [0.5, 1.5, -2]}")))
        {
            using var client = new OpenRlhfRewards(flaky.Url, null, TimeSpan.FromSeconds(10), attempts: 3);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            Assert.Equal([0.5f, 1.5f, -2f], client.Score(Pairs));
            Assert.Equal(3, flaky.Requests);
            Assert.True(clock.Elapsed >= TimeSpan.FromSeconds(1), $"answered after {clock.Elapsed.TotalSeconds:F2} s: Retry-After was not honoured");
        }
        // a 400 is the client's fault: one attempt, and the message names the URL and the status
        using (var strict = new ScriptedServer((400, null, "bad query"), (200, null, "{\"rewards\": [0, 0, 0]}")))
        {
            using var client = new OpenRlhfRewards(strict.Url, null, TimeSpan.FromSeconds(10), attempts: 3);
            var e = Assert.Throws<InvalidOperationException>(() => client.Score(Pairs));
            Assert.Contains("HTTP 400", e.Message);
            Assert.Contains(strict.Url, e.Message);
            Assert.Equal(1, strict.Requests);
        }
    }

    [Fact]
    public void PpoWithARewardUrlEqualsPpoWithTheInProcessScorer()
    {
        var models = PpoTrainerTests.Models.Value;
        var local = PpoTrainerTests.Tiny() with { Iterations = 2, BestOfN = [1] };
        PpoTrainer.Train(local, new RunControl { Progress = false });
        using var rw = ServerProcess.Start("reward", "--reward-model", Path.Combine(models.Rm, "onnx"), "--threads", "1");
        var remote = local with
        {
            Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo"), RewardUrl = rw.Address + "/get_reward", ServiceTimeoutSeconds = 120,
        };
        PpoTrainer.Train(remote, new RunControl { Progress = false });
        Assert.Equal(File.ReadAllBytes(Path.Combine(local.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(remote.Out, "model.safetensors")));
        var a = MetricsTable.ReadCsv(Path.Combine(local.Out, "metrics.csv"));
        var b = MetricsTable.ReadCsv(Path.Combine(remote.Out, "metrics.csv"));
        Assert.Equal(a.Rows[^1]["objective/rm_scores"], b.Rows[^1]["objective/rm_scores"]);
        Assert.Contains("reward_url replaces the scorer", Assert.Throws<InvalidDataException>(() => (remote with { RewardEndpoint = rw.Address }).Validate()).Message);
    }
}
