using Rlhf.Build;
using TorchSharp;

namespace Rlhf.Training.Tests.Build;

public sealed class ElfWeakVersionTests
{
    const string Version = "GLIBCXX_3.4.32";

    static string OutputLibTorchSharp() =>
        Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");

    static string PackageLibTorchSharp()
    {
        string root = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        return Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
    }

    [Fact]
    public void PackageLibraryRequiresTheVersionStrongly()
    {
        byte[] elf = File.ReadAllBytes(PackageLibTorchSharp());
        ushort? flags = ElfWeakVersion.ReadNeededFlags(elf, Version);
        Assert.NotNull(flags);
        Assert.Equal(0, flags!.Value & 0x2);
    }

    [Fact]
    public void MarkWeakSetsOnlyTheWeakFlagOfThatEntry()
    {
        byte[] original = File.ReadAllBytes(PackageLibTorchSharp());
        byte[] patched = (byte[])original.Clone();
        Assert.True(ElfWeakVersion.MarkWeak(patched, Version));
        Assert.Equal(0x2, ElfWeakVersion.ReadNeededFlags(patched, Version)!.Value & 0x2);
        int changed = 0;
        for (int i = 0; i < original.Length; i++) if (original[i] != patched[i]) changed++;
        Assert.Equal(1, changed);                       // one byte of one vernaux entry, nothing else
        Assert.False(ElfWeakVersion.MarkWeak(patched, Version)); // idempotent
        Assert.Null(ElfWeakVersion.ReadNeededFlags(patched, "GLIBCXX_99.0"));
    }

    [Fact]
    public void BuildOutputIsPatchedExactlyWhenTheSystemLacksTheVersion()
    {
        string? system = ElfWeakVersion.FindSystemLibStdCxx();
        Assert.NotNull(system);
        bool systemHas = ElfWeakVersion.LibraryHasVersion(system!, Version);
        ushort flags = ElfWeakVersion.ReadNeededFlags(File.ReadAllBytes(OutputLibTorchSharp()), Version)!.Value;
        Assert.Equal(!systemHas, (flags & 0x2) != 0);
        // and the package cache is untouched
        Assert.Equal(0, ElfWeakVersion.ReadNeededFlags(File.ReadAllBytes(PackageLibTorchSharp()), Version)!.Value & 0x2);
    }

    [Fact]
    public void TorchLoadsAndComputes()
    {
        using var a = torch.tensor(new float[] { 1, 2, 3, 4 }).reshape(2, 2);
        using var b = torch.matmul(a, a);
        Assert.Equal(new float[] { 7, 10, 15, 22 }, b.data<float>().ToArray());
    }
}
