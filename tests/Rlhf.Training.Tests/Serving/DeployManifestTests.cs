using System.Text.Json;
using System.Text.RegularExpressions;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Services;
using Rlhf.Training.Cli;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// The Kubernetes manifests in deploy/ agree with the command lines and configs they run (there is no YAML library in
/// the build, so the few lines that matter are read as text): every option a container passes exists, ports agree
/// between the replica's --port, its container, its probes and its Service, and the trainer's PPO config is a valid
/// config whose endpoints, token file and model folders point at those replicas.
/// </summary>
public sealed class DeployManifestTests
{
    static string Deploy(string file)
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Rlhf.sln"))) dir = dir.Parent;
        return File.ReadAllText(Path.Combine(dir!.FullName, "deploy", file));
    }

    /// <summary>The container's args (a one-line flow sequence, which is also JSON).</summary>
    static string[] Args(string yaml) => JsonSerializer.Deserialize<string[]>(Regex.Match(yaml, @"^\s*args: (\[.*\])$", RegexOptions.Multiline).Groups[1].Value)!;

    static string Value(string[] args, string option) => args[Array.IndexOf(args, option) + 1];

    static int[] Numbers(string yaml, string key) =>
        [.. Regex.Matches(yaml, $@"^\s*(?:- )?{key}: (\d+)$", RegexOptions.Multiline).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture))];

    [Theory]
    [InlineData("rollout.yaml", "rollout", "rlhf-rollout")]
    [InlineData("reward.yaml", "reward", "rlhf-reward")]
    public void ReplicaManifestsPassServeOptionsThatExistAndAgreeOnThePort(string file, string command, string service)
    {
        string yaml = Deploy(file);
        string[] args = Args(yaml);
        Assert.Equal(command, args[0]);
        var serve = ServeCommand.Create().Subcommands.Single(c => c.Name == command);
        foreach (string option in args.Where(a => a.StartsWith("--", StringComparison.Ordinal)))
            Assert.Contains(serve.Options, o => o.Name == option);
        Assert.Equal("0.0.0.0", Value(args, "--host"));   // a pod is reached on its own address, not loopback
        int port = int.Parse(Value(args, "--port"), System.Globalization.CultureInfo.InvariantCulture);
        Assert.All(Numbers(yaml, "containerPort").Concat(Numbers(yaml, "port")).Concat(Numbers(yaml, "targetPort")), p => Assert.Equal(port, p));
        Assert.True(Numbers(yaml, "port").Length >= 2, "the readiness probe and the Service name the port");
        Assert.Contains("readinessProbe:\n            httpGet:\n              path: /ready", yaml, StringComparison.Ordinal);
        Assert.Contains("livenessProbe:\n            httpGet:\n              path: /health", yaml, StringComparison.Ordinal);
        Assert.Contains($"prometheus.io/port: \"{port}\"", yaml, StringComparison.Ordinal);
        Assert.Matches($@"kind: Service\nmetadata:\n  name: {service}\n", yaml);
        Assert.Equal("/var/run/rlhf/token", Value(args, "--token-file"));
        Assert.Contains("mountPath: /var/run/rlhf", yaml, StringComparison.Ordinal);
    }

    [Fact]
    public void TheTrainerRunsAValidPpoConfigThatPointsAtTheReplicas()
    {
        string trainer = Deploy("trainer.yaml"), rollout = Deploy("rollout.yaml"), reward = Deploy("reward.yaml");
        // The PPO config in the ConfigMap: a valid config (unknown keys are refused by the loader).
        string json = string.Join('\n', Regex.Match(trainer, @"ppo\.json: \|\n((?:    .*\n)+)").Groups[1].Value.Split('\n').Select(l => l.Length >= 4 ? l[4..] : l));
        string file = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo.json");
        File.WriteAllText(file, json);
        var cfg = ConfigLoader.Load<PpoConfig>(file, []);
        Assert.Equal("/var/run/rlhf/token", cfg.ServiceTokenFile);

        // Rollout replicas through the headless Service's DNS name, re-resolved every iteration.
        var target = ReplicaTarget.Parse(Assert.Single(cfg.RolloutEndpoints));
        Assert.Equal(("rlhf-rollout.rlhf.svc.cluster.local", int.Parse(Value(Args(rollout), "--port"), System.Globalization.CultureInfo.InvariantCulture)), (target.Host, target.Port));
        Assert.Contains("clusterIP: None", rollout, StringComparison.Ordinal);
        var rewardUri = new Uri(cfg.RewardEndpoint!);
        Assert.Equal(("rlhf-reward.rlhf.svc.cluster.local", Value(Args(reward), "--port")), (rewardUri.Host, rewardUri.Port.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        Assert.Equal(cfg.SftModel + "/onnx", Value(Args(rollout), "--model"));
        Assert.Equal(cfg.RmModel + "/onnx", Value(Args(reward), "--reward-model"));

        // The Job's command lines use options rlhf ppo has, and mount what the config names.
        string script = Args(trainer)[0];
        var ppo = PpoCommand.Create();
        foreach (Match m in Regex.Matches(script, @"--[a-z-]+")) Assert.Contains(ppo.Options, o => o.Name == m.Value);
        Assert.Contains("--config /etc/rlhf/ppo.json", script, StringComparison.Ordinal);
        foreach (string mount in new[] { "/etc/rlhf", "/models", "/runs", "/var/run/rlhf" }) Assert.Contains("mountPath: " + mount, trainer, StringComparison.Ordinal);
        Assert.StartsWith("/runs/", cfg.Out, StringComparison.Ordinal);
        Assert.Contains("kind: Job", trainer, StringComparison.Ordinal);
    }

    [Fact]
    public void EveryObjectLivesInOneNamespaceAndTheSecretHoldsTheTokenKey()
    {
        foreach (string file in new[] { "secret.yaml", "storage.yaml", "rollout.yaml", "reward.yaml", "trainer.yaml" })
        {
            string yaml = Deploy(file);
            Assert.Equal(Regex.Matches(yaml, "^kind: ", RegexOptions.Multiline).Count, Regex.Matches(yaml, "^  namespace: rlhf$", RegexOptions.Multiline).Count);
        }
        Assert.Matches(@"stringData:\n  token: ", Deploy("secret.yaml"));
        Assert.Contains("name: rlhf", Deploy("namespace.yaml"), StringComparison.Ordinal);
    }
}
