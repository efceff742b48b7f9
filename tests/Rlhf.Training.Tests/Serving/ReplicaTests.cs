using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Services;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Ppo;
using Xunit.Abstractions;

namespace Rlhf.Training.Tests.Serving;

/// <summary>Several replicas behind the trainer: shard re-send, rejoin after a restart, and PPO over replicas (one killed mid-run) equal to PPO in process.</summary>
public sealed class ReplicaTests(ITestOutputHelper output) : IDisposable
{
    readonly string _tokenFile = WriteToken();

    static string WriteToken()
    {
        string file = Path.Combine(Directory.CreateTempSubdirectory().FullName, "token");
        File.WriteAllText(file, ServeModels.Token + "\n");
        return file;
    }

    public void Dispose() => Directory.Delete(Path.GetDirectoryName(_tokenFile)!, recursive: true);

    static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(60);

    /// <summary>
    /// The issue's scenario: 3 rollout replicas and a reward replica as separate processes, 3 PPO iterations; in
    /// iteration 2 one replica is frozen with a shard in flight and then killed (SIGKILL), restarted on its port while the
    /// run goes on. The pool's trace (<see cref="ReplicaPool.Trace"/>) is the timeline the assertions read.
    /// </summary>
    [Fact]
    public async Task PpoOverThreeReplicasSurvivesAReplicaKilledMidShardAndEqualsPpoInProcessBitForBit()
    {
        var models = PpoTrainerTests.Models.Value;
        var local = PpoTrainerTests.Tiny() with { Iterations = 3, BestOfN = [1], RolloutShardSize = 3, NormalizationSamples = 16 };
        PpoTrainer.Train(local, new RunControl { Progress = false });

        string sftOnnx = Path.Combine(models.Sft, "onnx"), rmOnnx = Path.Combine(models.Rm, "onnx");
        string[] rolloutArgs = ["rollout", "--model", sftOnnx, "--threads", "1", "--token-file", _tokenFile];
        var replicas = new List<ReplicaProcess>();
        try
        {
            for (int i = 0; i < 3; i++) replicas.Add(ServerProcess.Start(rolloutArgs));
            replicas.Add(ServerProcess.Start("reward", "--reward-model", rmOnnx, "--threads", "1", "--token-file", _tokenFile));
            var (victim, reward) = (replicas[1], replicas[3]);
            string[] addresses = [.. replicas.Take(3).Select(r => r.Address)];
            string pool = string.Join(",", addresses);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var trace = new ConcurrentQueue<Span>();
            var marks = new ConcurrentDictionary<string, double>();
            Task? killAndRestart = null;
            object gate = new();
            using var listener = new ActivityListener
            {
                ShouldListenTo = s => s.Name == "Rlhf.Inference.ReplicaPool",   // (by name: the source may be created while listeners are polled)
                Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
                ActivityStarted = a =>
                {
                    if (Tag(a, "rlhf.pool") != pool) return;   // another pool (other tests run alongside)
                    // Iteration 2 (weights version 1): the victim's shard is on its way; freeze the victim so the shard
                    // stays in flight, kill it once the request waits unread at its socket, then start it again on its port.
                    if (a.OperationName == "rollout.shard" && Tag(a, "rlhf.replica") == victim.Address && Tag(a, "rlhf.required_version") == "1")
                        lock (gate)
                            if (killAndRestart is null)
                            {
                                victim.Pause();
                                marks["frozen"] = clock.Elapsed.TotalSeconds;
                                killAndRestart = Task.Run(() =>
                                {
                                    victim.WaitUntilUnreadRequest(CallTimeout);
                                    marks["killed"] = clock.Elapsed.TotalSeconds;   // the shard cannot fail before: its replica is frozen
                                    victim.Kill();
                                    victim.Dispose();
                                    replicas[1] = ServerProcess.Start(victim.Port, rolloutArgs);
                                    marks["restarted"] = clock.Elapsed.TotalSeconds;
                                });
                            }
                    // Hold the push of version 2 until the restarted replica listens, so that it rejoins within this run.
                    if (a.OperationName == "rollout.push" && Tag(a, "rlhf.weights_version") == "2")
                        Assert.True(killAndRestart?.Wait(TimeSpan.FromSeconds(120)), "the victim was not killed and restarted");
                },
                ActivityStopped = a =>
                {
                    if (Tag(a, "rlhf.pool") != pool) return;
                    double end = clock.Elapsed.TotalSeconds;
                    trace.Enqueue(new Span(a.OperationName, end - a.Duration.TotalSeconds, end, a.Status == ActivityStatusCode.Error,
                        a.TagObjects.ToDictionary(t => t.Key, t => Convert.ToString(t.Value, CultureInfo.InvariantCulture) ?? ""),
                        a.Parent?.SpanId.ToHexString()) { Id = a.SpanId.ToHexString() });
                },
            };
            ActivitySource.AddActivityListener(listener);

            var remote = local with
            {
                Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo"),
                RolloutEndpoints = addresses, RewardEndpoint = reward.Address, ServiceTokenFile = _tokenFile, ServiceTimeoutSeconds = 120,
            };
            PpoTrainer.Train(remote, new RunControl { Progress = false });
            Assert.NotNull(killAndRestart);
            await killAndRestart!;
            var spans = trace.ToArray();
            var calls = spans.Where(s => s.Name == "rollout.generate").OrderBy(s => s.Start).ToArray();
            var shards = spans.Where(s => s.Name == "rollout.shard").ToArray();

            // Every request index of every call answered exactly once, by weights of the version the call required.
            string[] versions = [.. calls.Select(c => c.Tags["rlhf.required_version"])];
            Assert.Equal(["0", "1", "2", "3"], versions.Distinct());
            Assert.Equal(versions.Order(), versions);
            foreach (var c in calls)
            {
                var ok = shards.Where(s => s.Parent == c.Id && !s.Failed).ToArray();
                int[] answered = [.. ok.SelectMany(s => Enumerable.Range(int.Parse(s.Tags["rlhf.first_request"], CultureInfo.InvariantCulture), int.Parse(s.Tags["rlhf.requests"], CultureInfo.InvariantCulture))).Order()];
                Assert.Equal(Enumerable.Range(0, int.Parse(c.Tags["rlhf.requests"], CultureInfo.InvariantCulture)), answered);
                Assert.All(ok, s => Assert.Equal(c.Tags["rlhf.required_version"], s.Tags["rlhf.weights_version"]));
            }

            // One shard failed: the victim's, in iteration 2, after it froze; it was re-sent to another replica after the kill.
            // (on a failure, the message lists the whole trace)
            string timeline = string.Join("\n", spans.OrderBy(x => x.Start).Select(x => $"{x.Start,8:F3}-{x.End,8:F3} {x.Name,-16} {(x.Failed ? "FAILED " : "")}" +
                string.Join(" ", x.Tags.Select(kv => $"{kv.Key[5..]}={kv.Value}"))));
            var failedShards = shards.Where(s => s.Failed).ToArray();
            Assert.True(failedShards.Length == 1, $"{failedShards.Length} failed shards; marks {string.Join(", ", marks)}\n{timeline}");
            var failed = failedShards[0];
            Assert.Equal((victim.Address, "1", "1"), (failed.Tags["rlhf.replica"], failed.Tags["rlhf.required_version"], failed.Tags["rlhf.attempt"]));
            var resends = shards.Where(s => s.Parent == failed.Parent && s.Tags["rlhf.shard"] == failed.Tags["rlhf.shard"] && !s.Failed).ToArray();
            Assert.True(resends.Length == 1, $"{resends.Length} answers to the failed shard\n{timeline}");
            var resent = resends[0];
            Assert.Equal("2", resent.Tags["rlhf.attempt"]);
            Assert.NotEqual(victim.Address, resent.Tags["rlhf.replica"]);
            Assert.True(failed.End >= marks["killed"] && resent.Start >= failed.End, $"failed at {failed.End:F3} s, re-sent at {resent.Start:F3} s, killed at {marks["killed"]:F3} s");

            // The restarted replica rejoined at version 2 (pulling the weights first) and only then got work, which it did.
            var rejoins = spans.Where(s => s.Name == "rollout.rejoin" && !s.Failed && s.Tags["rlhf.replica"] == victim.Address).ToArray();
            Assert.True(rejoins.Length == 1, $"{rejoins.Length} rejoins of the victim\n{timeline}");
            var rejoin = rejoins[0];
            Assert.Equal(("0", "2"), (rejoin.Tags["rlhf.replica_version"], rejoin.Tags["rlhf.weights_version"]));
            Assert.True(rejoin.Start >= marks["restarted"]);
            var victimWork = shards.Where(s => s.Tags["rlhf.replica"] == victim.Address && s.Start > marks["killed"]).ToArray();
            Assert.NotEmpty(victimWork);
            Assert.All(victimWork, s => Assert.True(s.Start >= rejoin.End && !s.Failed));
            // Pushes: versions 0..3, each to live replicas only (none went to the dead process, so none failed).
            var pushes = spans.Where(s => s.Name == "rollout.push").ToArray();
            Assert.Equal(["0", "1", "2", "3"], pushes.Select(p => p.Tags["rlhf.weights_version"]).Distinct());
            Assert.All(pushes, p => Assert.False(p.Failed));

            // The timeline, for the record: iteration 2's generate time against the undisturbed iterations and the local run.
            var remoteMetrics = MetricsTable.ReadCsv(Path.Combine(remote.Out, "metrics.csv"));
            var localMetrics = MetricsTable.ReadCsv(Path.Combine(local.Out, "metrics.csv"));
            output.WriteLine($"frozen {marks["frozen"]:F3} s, killed {marks["killed"]:F3} s, shard failed {failed.End:F3} s, re-sent {resent.Start:F3}–{resent.End:F3} s " +
                             $"to {resent.Tags["rlhf.replica"]}, restarted {marks["restarted"]:F3} s, rejoined {rejoin.Start:F3}–{rejoin.End:F3} s");
            for (int i = 0; i < 3; i++)
                output.WriteLine($"iteration {i + 1}: generate {remoteMetrics.Rows[i]["time/generate"]:F3} s over replicas, {localMetrics.Rows[i]["time/generate"]:F3} s in process; " +
                                 $"sync {remoteMetrics.Rows[i]["time/sync"]:F3} s vs {localMetrics.Rows[i]["time/sync"]:F3} s");
            Assert.True(remoteMetrics.Rows[1]["time/generate"] >= marks["killed"] - marks["frozen"], "iteration 2 waited for the frozen replica until its kill");

            // A stale version is refused by every replica (FAILED_PRECONDITION), which all hold version 3.
            var probe = new[] { RolloutRequest.FromText("the product", new SamplingOptions { MaxNewTokens = 2, Seed = 1 }) };
            foreach (string a in addresses)
            {
                using var client = new RemoteRollouts(a, ServeModels.Token);
                Assert.Equal(3UL, (await client.StatusAsync()).WeightsVersion);
                var stale = await Assert.ThrowsAsync<WeightsVersionMismatchException>(() => client.GenerateAsync(probe, new RolloutCall { RequiredVersion = 2, Timeout = CallTimeout }));
                Assert.Equal((2UL, 3UL), (stale.Required, stale.Loaded));
            }

            // The run over replicas equals the run in process bit for bit.
            Assert.Equal(File.ReadAllBytes(Path.Combine(local.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(remote.Out, "model.safetensors")));
            Assert.Equal(File.ReadAllBytes(Path.Combine(local.Out, "critic", "model.safetensors")), File.ReadAllBytes(Path.Combine(remote.Out, "critic", "model.safetensors")));
            Assert.Equal(localMetrics.Rows.Count, remoteMetrics.Rows.Count);
            for (int i = 0; i < localMetrics.Rows.Count; i++)
                foreach (var (k, v) in localMetrics.Rows[i])
                    if (!k.StartsWith("time/", StringComparison.Ordinal) && k != "samples/s")
                        Assert.True(v.Equals(remoteMetrics.Rows[i][k]), $"iteration {i + 1}: {k} = {v} in process, {remoteMetrics.Rows[i][k]} over replicas");

            // A push to a replica that hangs (it accepts the connection and never answers) ends at its deadline; the
            // other replica takes it and serves on.
            using var hung = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
            hung.Start();
            string hungAddress = $"http://127.0.0.1:{((System.Net.IPEndPoint)hung.LocalEndpoint).Port}";
            using var pushPool = new ReplicaPool([addresses[2], hungAddress], ServeModels.Token, shardSize: 3, TimeSpan.FromSeconds(2), TextWriter.Null);
            using var actor = LlamaForCausalLM.FromPretrained(remote.Out, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            InferenceServices.Sync(pushPool, actor, 4);
            // ended by the 2 s push deadline (then the rejoin probe's 5 s status deadline), not by an answer; bounded above only as a hang guard
            Assert.InRange(sw.Elapsed.TotalSeconds, 2, CallTimeout.TotalSeconds);
            Assert.Equal([addresses[2]], pushPool.LiveReplicas);
            Assert.All(await pushPool.GenerateAsync(probe, new RolloutCall { RequiredVersion = 4, Timeout = CallTimeout }), r => Assert.Equal(4UL, r.WeightsVersion));
        }
        finally
        {
            foreach (var r in replicas) r.Dispose();
        }
    }

    static string? Tag(Activity a, string key) => Convert.ToString(a.GetTagItem(key), CultureInfo.InvariantCulture);

    sealed record Span(string Name, double Start, double End, bool Failed, Dictionary<string, string> Tags, string? Parent)
    {
        public string Id { get; init; } = "";
    }
}
