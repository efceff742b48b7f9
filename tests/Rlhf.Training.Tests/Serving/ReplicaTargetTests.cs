using System.Net;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Services;
using Rlhf.Training.Common;

namespace Rlhf.Training.Tests.Serving;

/// <summary>Replica targets: fixed addresses and <c>dns:///name:port</c> names that the pool resolves again on every call.</summary>
public sealed class ReplicaTargetTests(RolloutServerFixture fx) : IClassFixture<RolloutServerFixture>
{
    [Fact]
    public void TargetsParseAsFixedAddressesOrDnsNames()
    {
        var fixedTarget = ReplicaTarget.Parse("http://10.0.0.5:7001/");
        Assert.Equal(("http://10.0.0.5:7001", (string?)null), (fixedTarget.Address, fixedTarget.Host));
        var dns = ReplicaTarget.Parse("dns:///rollout.rlhf.svc.cluster.local:7001");
        Assert.Equal(((string?)null, "rollout.rlhf.svc.cluster.local", 7001), (dns.Address, dns.Host, dns.Port));
        foreach (string bad in new[] { "dns:///rollout", "dns:///rollout:0", "dns:///rollout:x", "dns://8.8.8.8/rollout:7001", "rollout:7001", "http://h:1/v1", "ftp://h:1" })
            Assert.Contains("give", Assert.Throws<ArgumentException>(() => ReplicaTarget.Parse(bad)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ResolvedAddressesAreDistinctIpv4FirstWithIpv6InBrackets()
    {
        IPAddress[] answer = [IPAddress.Parse("fd00::2"), IPAddress.Parse("10.1.0.9"), IPAddress.Parse("10.1.0.10"), IPAddress.Parse("10.1.0.9")];
        Assert.Equal(["http://10.1.0.9:7001", "http://10.1.0.10:7001", "http://[fd00::2]:7001"], ReplicaTarget.Addresses(answer, 7001));
    }

    [Fact]
    public async Task LocalhostResolvesToLoopbackAddressesAndAPoolOverTheNameServes()
    {
        var target = ReplicaTarget.Parse($"dns:///localhost:{fx.Server.Port}");
        var addresses = await target.ResolveAsync();
        Assert.NotEmpty(addresses);
        Assert.All(addresses, a => Assert.True(IPAddress.IsLoopback(IPAddress.Parse(new Uri(a).Host.Trim('[', ']'))), a));
        Assert.Contains(fx.Server.Address, addresses);

        using var pool = new ReplicaPool([target.Text], ServeModels.Token, shardSize: 2, TimeSpan.FromSeconds(60), TextWriter.Null);
        var requests = Enumerable.Range(0, 3).Select(i => RolloutRequest.FromText("the product", new SamplingOptions { MaxNewTokens = 3, Seed = (ulong)i })).ToList();
        var results = await pool.GenerateAsync(requests, new RolloutCall { Timeout = TimeSpan.FromSeconds(60) });
        Assert.Equal(3, results.Count);
        Assert.Contains(fx.Server.Address, pool.LiveReplicas);   // (a ::1 answer would stay out: the server listens on 127.0.0.1)
    }

    [Fact]
    public async Task ANameIsResolvedAgainOnEveryCallSoReplicasJoinAtTheCurrentVersionAndLeave()
    {
        using var second = ServerProcess.Start("rollout", "--model", fx.Models.Policy, "--threads", "1", "--token-file", fx.Models.TokenFile);
        string a = fx.Server.Address, b = second.Address;
        // The answers of successive resolutions: the first push (layout, then push), a generate, the second push, a generate.
        var answers = new Queue<IReadOnlyList<string>>([[a], [a], [a, b], [a, b], [b]]);
        int resolutions = 0;
        using var pool = new ReplicaPool(["dns:///rollout:7001"], ServeModels.Token, shardSize: 1, TimeSpan.FromSeconds(60), TextWriter.Null,
            (_, _) => { resolutions++; return Task.FromResult(answers.Dequeue()); });
        var requests = Enumerable.Range(0, 4).Select(i => RolloutRequest.FromText("slow", new SamplingOptions { MaxNewTokens = 3, Seed = (ulong)i })).ToList();

        Assert.Equal(1UL, await Push(1));   // resolves [a]: a joins (pulling version 1)
        Assert.Equal([a], pool.LiveReplicas);
        var call = new RolloutCall { RequiredVersion = 1, Timeout = TimeSpan.FromSeconds(60) };
        var results = await pool.GenerateAsync(requests, call);   // resolves [a, b]: b joins at version 1 before it gets work
        Assert.Equal([a, b], pool.LiveReplicas);
        Assert.All(results, r => Assert.Equal(1UL, r.WeightsVersion));
        using (var client = new RemoteRollouts(b, ServeModels.Token)) Assert.Equal(1UL, (await client.StatusAsync()).WeightsVersion);
        Assert.Equal(2UL, await Push(2));   // [a, b]: both get version 2
        Assert.All(await pool.GenerateAsync(requests, call with { RequiredVersion = 2 }), r => Assert.Equal(2UL, r.WeightsVersion));   // [b]: a leaves
        Assert.Equal([b], pool.KnownReplicas);
        Assert.Equal(5, resolutions);

        async Task<ulong> Push(ulong version)
        {
            InferenceServices.Sync(pool, fx.Models.Other, version);
            return pool.WeightsVersion;
        }
    }
}
