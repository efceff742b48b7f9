using Rlhf.Build;
using Rlhf.Training.Tests.Common;
using Rlhf.Training.Tests.Serving;

namespace Rlhf.Training.Tests.Build;

/// <summary>
/// `rlhf` as a .NET tool, exactly as docs/cli.md installs it: dotnet pack, dotnet tool install into a tool path, then the
/// installed command run from a folder outside the repository trains one SFT step of the default model (libtorch
/// loads, the shipped models/tiny/config.json is found next to the tool).
/// Packing publishes and zips about 600 MB on every core for half a minute, so this test runs alone, after the
/// parallel ones, where it cannot starve the serving tests that time a running batch.
/// </summary>
[Collection(Name)]
public sealed class DotnetToolTests
{
    /// <summary>The collection that runs by itself (xunit runs a non-parallel collection after all the others).</summary>
    public const string Name = "rlhf tool (runs alone)";

    static readonly Dictionary<string, string> Quiet = new() { ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1", ["DOTNET_NOLOGO"] = "1" };

    static (int Code, string Output) Run(string file, string[] args, string cwd, int timeoutSeconds) =>
        ServerProcess.Run(file, args, cwd, TimeSpan.FromSeconds(timeoutSeconds), Quiet);

    [Fact]
    public void PackedToolInstallsAndTrainsFromAnotherFolder()
    {
        string repo = DocsPages.RepoRoot();
        Assert.Contains("dotnet tool install --global Rlhf --add-source nupkg", DocsPages.Docs("cli.md"), StringComparison.Ordinal);
        string tmp = Directory.CreateTempSubdirectory("rlhf-tool-").FullName;
        try
        {
            string feed = Path.Combine(tmp, "nupkg"), tools = Path.Combine(tmp, "tools"), work = Path.Combine(tmp, "work");
            Directory.CreateDirectory(work);
            var pack = Run("dotnet", ["pack", "src/Training", "-c", "Release", "-o", feed], repo, 600);
            Assert.True(pack.Code == 0, pack.Output);
            Assert.True(File.Exists(Path.Combine(feed, "Rlhf.linux-x64.0.1.0.nupkg")), string.Join(", ", Directory.GetFiles(feed).Select(Path.GetFileName)));
            var install = Run("dotnet", ["tool", "install", "Rlhf", "--tool-path", tools, "--add-source", feed], work, 300);
            Assert.True(install.Code == 0, install.Output);

            string rlhf = Path.Combine(tools, "rlhf");
            var help = Run(rlhf, ["--help"], work, 120);
            Assert.True(help.Code == 0 && help.Output.Contains("pipeline", StringComparison.Ordinal), help.Output);
            // the published libLibTorchSharp.so is patched whatever this machine's libstdc++ has
            string lib = Directory.GetFiles(Path.Combine(tools, ".store"), "libLibTorchSharp.so", SearchOption.AllDirectories).Single();
            Assert.Equal(0x2, ElfWeakVersion.ReadNeededFlags(File.ReadAllBytes(lib), "GLIBCXX_3.4.32")!.Value & 0x2);
            var sft = Run(rlhf, ["sft", "--out", "sft", "--set", "max_steps=1", "--set", "sample_count=1", "--set", "default_train_size=64", "--set", "default_eval_size=8", "--threads", "1"], work, 300);
            Assert.True(sft.Code == 0, sft.Output);
            Assert.True(File.Exists(Path.Combine(work, "sft", "model.safetensors")), sft.Output);
        }
        finally
        {
            try { Directory.Delete(tmp, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}

/// <summary><see cref="DotnetToolTests"/>' collection: not run in parallel with any other test.</summary>
[CollectionDefinition(DotnetToolTests.Name, DisableParallelization = true)]
public sealed class DotnetToolCollection;
