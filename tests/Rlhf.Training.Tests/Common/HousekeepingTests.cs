using Rlhf.Export;
using Rlhf.Training.Common;

namespace Rlhf.Training.Tests.Common;

/// <summary>The shared helpers that replaced copies: SplitMix64 and atomic file writes.</summary>
public sealed class HousekeepingTests
{
    [Fact]
    public void SplitMix64GivesTheReferenceStream()
    {
        // Vigna's splitmix64.c from x = 0: e220a8397b1dcdaf 6e789e6aa1b965f4 06c45d188009454f
        var rng = new SplitMixRandom(0);
        Assert.Equal([0xE220A8397B1DCDAFUL, 0x6E789E6AA1B965F4UL, 0x06C45D188009454FUL], [rng.NextU64(), rng.NextU64(), rng.NextU64()]);
        Assert.Equal(0xE220A8397B1DCDAFUL, Rlhf.Inference.Rollout.Rng.Mix(0));
        ulong x = 0;
        Assert.Equal(0xE220A8397B1DCDAFUL, Rlhf.Inference.Rollout.Rng.SplitMix64(ref x));
        Assert.Equal(0x9E3779B97F4A7C15UL, x);
    }

    [Fact]
    public void AtomicWriteReplacesWholeFilesAndLeavesNothingOnFailure()
    {
        string dir = Directory.CreateTempSubdirectory("rlhf-atomic-").FullName;
        string path = Path.Combine(dir, "sub", "a.json");
        AtomicFile.WriteAllText(path, "first");                       // creates the folder
        Assert.Equal("first", File.ReadAllText(path));
        AtomicFile.WriteAllBytes(path, [0x32]);
        Assert.Equal("2", File.ReadAllText(path));
        AtomicFile.WriteStream(path, s => s.Write("third"u8));
        Assert.Equal("third", File.ReadAllText(path));

        Assert.Throws<InvalidOperationException>(() => AtomicFile.WriteStream(path, s =>
        {
            s.Write("half of a fourth"u8);
            throw new InvalidOperationException("disk full");
        }));
        Assert.Equal("third", File.ReadAllText(path));                // the old file is intact
        Assert.Equal(["a.json"], Directory.GetFiles(Path.GetDirectoryName(path)!).Select(Path.GetFileName));   // no temp file left
    }
}
