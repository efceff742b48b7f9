using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Services;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.Tests.Ppo;

namespace Rlhf.Training.Tests.Serving;

/// <summary>Several replicas behind the trainer: shard re-send, rejoin after a restart, and PPO over replicas equal to PPO in process.</summary>
public sealed class ReplicaTests(RolloutServerFixture fx) : IClassFixture<RolloutServerFixture>
{
    static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task AShardOfAKilledReplicaIsResentAndARestartedReplicaRejoinsAtTheCurrentVersion()
    {
        string[] args = ["rollout", "--model", fx.Models.Policy, "--threads", "1", "--token-file", fx.Models.TokenFile];
        var a = ServerProcess.Start(args);
        int portA = a.Port;
        using var b = ServerProcess.Start(args);
        ServerProcess? restarted = null;
        var log = new StringWriter();
        try
        {
            using var pool = new ReplicaPool([a.Address, b.Address], ServeModels.Token, shardSize: 2, CallTimeout, log);
            InferenceServices.Sync(pool, fx.Models.Other, 1);
            var requests = Enumerable.Range(0, 6).Select(i => RolloutRequest.FromText(i % 2 == 0 ? "the product" : "slow",
                new SamplingOptions { Temperature = 1, MaxNewTokens = 6, Seed = (ulong)i })).ToList();
            using var engine = RolloutEngine.Load(fx.Models.Policy, new RolloutEngineOptions { Threads = 1 });
            InferenceServices.Sync(engine, fx.Models.Other, 1);
            var expected = engine.Generate(requests);

            a.Kill();   // SIGKILL: its first shard fails and goes to b
            var results = await pool.GenerateAsync(requests, new RolloutCall { RequiredVersion = 1, Timeout = CallTimeout });
            Assert.Equal(expected.Select(r => r.ResponseIds), results.Select(r => r.ResponseIds));
            Assert.All(results, r => Assert.Equal(1UL, r.WeightsVersion));
            Assert.True(pool.Resent >= 1, log.ToString());
            Assert.Equal([b.Address], pool.LiveReplicas);

            // A push while a is down reaches b only and ends; a restarted a comes back at version 2 before it gets work.
            InferenceServices.Sync(pool, fx.Models.Other, 2);
            restarted = ServerProcess.Start(portA, args);
            results = await pool.GenerateAsync(requests, new RolloutCall { RequiredVersion = 2, Timeout = CallTimeout });
            Assert.True(pool.LiveReplicas.Count == 2, log.ToString());
            Assert.All(results, r => Assert.Equal(2UL, r.WeightsVersion));
            using var again = new RemoteRollouts(restarted.Address, ServeModels.Token);
            Assert.Equal(2UL, again.WeightsVersion);
            Assert.Equal(expected.Select(r => r.ResponseIds), results.Select(r => r.ResponseIds));
        }
        finally
        {
            a.Dispose();
            restarted?.Dispose();
        }
    }

    [Fact]
    public void PpoOverReplicasEqualsPpoInProcessBitForBit()
    {
        var models = PpoTrainerTests.Models.Value;
        var local = PpoTrainerTests.Tiny() with { Iterations = 2, BestOfN = [1], RolloutShardSize = 3 };
        PpoTrainer.Train(local, new RunControl { Progress = false });

        string sftOnnx = Path.Combine(models.Sft, "onnx"), rmOnnx = Path.Combine(models.Rm, "onnx");
        using var r1 = ServerProcess.Start("rollout", "--model", sftOnnx, "--threads", "1", "--token-file", fx.Models.TokenFile);
        using var r2 = ServerProcess.Start("rollout", "--model", sftOnnx, "--threads", "1", "--token-file", fx.Models.TokenFile);
        using var rw = ServerProcess.Start("reward", "--reward-model", rmOnnx, "--threads", "1", "--token-file", fx.Models.TokenFile);
        var remote = local with
        {
            Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo"),
            RolloutEndpoints = [r1.Address, r2.Address], RewardEndpoint = rw.Address, ServiceTokenFile = fx.Models.TokenFile, ServiceTimeoutSeconds = 120,
        };
        PpoTrainer.Train(remote, new RunControl { Progress = false });

        Assert.Equal(File.ReadAllBytes(Path.Combine(local.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(remote.Out, "model.safetensors")));
        Assert.Equal(File.ReadAllBytes(Path.Combine(local.Out, "critic", "model.safetensors")), File.ReadAllBytes(Path.Combine(remote.Out, "critic", "model.safetensors")));
        var a = MetricsTable.ReadCsv(Path.Combine(local.Out, "metrics.csv"));
        var b = MetricsTable.ReadCsv(Path.Combine(remote.Out, "metrics.csv"));
        Assert.Equal(a.Rows.Count, b.Rows.Count);
        for (int i = 0; i < a.Rows.Count; i++)
            foreach (var (k, v) in a.Rows[i])
                if (!k.StartsWith("time/", StringComparison.Ordinal) && k != "samples/s")
                    Assert.True(v.Equals(b.Rows[i][k]), $"iteration {i + 1}: {k} = {v} in process, {b.Rows[i][k]} over replicas");
    }
}
