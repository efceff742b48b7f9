using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Tests.Common;

/// <summary>The config keys the README lists for each stage are exactly the keys each config record reads and writes.</summary>
public sealed class ReadmeConfigKeysTests
{
    /// <summary>The repository's README.md, found above the test binary.</summary>
    internal static string Readme()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string f = Path.Combine(dir.FullName, "README.md");
            if (File.Exists(f) && File.Exists(Path.Combine(dir.FullName, "Rlhf.sln"))) return File.ReadAllText(f);
        }
        throw new FileNotFoundException("README.md not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The `keys` of the README paragraph that starts with <paramref name="heading"/> (values in parentheses left out).</summary>
    internal static string[] ReadmeKeys(string heading)
    {
        string readme = Readme();
        int start = readme.IndexOf(heading, StringComparison.Ordinal);
        Assert.True(start >= 0, $"README has no '{heading}' paragraph");
        int end = readme.IndexOf("\n\n", start, StringComparison.Ordinal);
        string paragraph = Regex.Replace(readme[start..end], @"\([^)]*\)", "");
        return [.. Regex.Matches(paragraph, "`([a-z0-9_]+)`").Select(m => m.Groups[1].Value)];
    }

    static string[] Keys<T>(T config) => [.. JsonNode.Parse(ConfigLoader.ToJson(config))!.AsObject().Select(kv => kv.Key)];

    [Fact]
    public void SftKeys() => Assert.Equal(ReadmeKeys("SFT keys:").Order(), Keys(new SftConfig()).Order());

    [Fact]
    public void RmKeys() => Assert.Equal(ReadmeKeys("RM keys:").Order(), Keys(new RmConfig()).Order());

    [Fact]
    public void PpoKeys() => Assert.Equal(ReadmeKeys("PPO keys:").Order(), Keys(new PpoConfig()).Order());

    [Fact]
    public void PipelineKeys() => Assert.Equal(ReadmeKeys("Pipeline keys:").Order(), Keys(new Rlhf.Training.Pipeline.PipelineConfig()).Order());

    [Fact]
    public void EveryListedKeyIsAcceptedByAnOverride()
    {
        foreach (string key in ReadmeKeys("SFT keys:"))
        {
            string value = JsonNode.Parse(ConfigLoader.ToJson(new SftConfig()))![key]?.ToJsonString() ?? "null";
            ConfigLoader.Load<SftConfig>(null, [$"{key}={value}"]);      // an unknown key would throw
        }
    }
}
