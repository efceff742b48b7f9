using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
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

    /// <summary>Runs binutils' <c>readelf</c> (an ELF reader independent of <see cref="ElfWeakVersion"/>).</summary>
    static string ReadElf(string args, string file)
    {
        var psi = new ProcessStartInfo("readelf", $"{args} \"{file}\"") { RedirectStandardOutput = true, RedirectStandardError = true };
        Process p;
        try { p = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e) { throw new InvalidOperationException("readelf (binutils) is needed by this test: apt-get install binutils", e); }
        using (p)
        {
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            Assert.Equal(0, p.ExitCode);
            return output;
        }
    }

    /// <summary>readelf -V's line for the version: (offset of the vernaux entry inside .gnu.version_r, flags text).</summary>
    static (int Offset, string Flags) ReadElfVersion(string file)
    {
        var m = Regex.Match(ReadElf("-V -W", file), @"0x([0-9a-f]+):\s+Name: " + Regex.Escape(Version) + @"\s+Flags: (\S+)");
        Assert.True(m.Success, $"readelf -V lists no {Version} in {file}");
        return (int.Parse(m.Groups[1].Value, NumberStyles.HexNumber), m.Groups[2].Value);
    }

    [Fact]
    public void ReadElfSeesTheOneChangedByteAsTheWeakFlag()
    {
        string package = PackageLibTorchSharp();
        Assert.Equal("none", ReadElfVersion(package).Flags);
        byte[] original = File.ReadAllBytes(package), patched = (byte[])original.Clone();
        Assert.True(ElfWeakVersion.MarkWeak(patched, Version));
        string copy = Path.Combine(Directory.CreateTempSubdirectory("rlhf-elf-").FullName, "lib.so");
        try
        {
            File.WriteAllBytes(copy, patched);
            var (entry, flags) = ReadElfVersion(copy);
            Assert.Equal("WEAK", flags);
            // Elf64_Vernaux: vna_hash (4 bytes), vna_flags (2), ...: the changed byte is the low byte of vna_flags,
            // at .gnu.version_r's file offset (readelf -S) + the entry's offset (readelf -V) + 4, and 0 became 2.
            var section = Regex.Match(ReadElf("-S -W", copy), @"\.gnu\.version_r\s+VERNEED\s+[0-9a-f]+\s+([0-9a-f]+)");
            Assert.True(section.Success);
            int at = int.Parse(section.Groups[1].Value, NumberStyles.HexNumber) + entry + 4;
            int changed = Enumerable.Range(0, original.Length).Single(i => original[i] != patched[i]);
            Assert.Equal(at, changed);
            Assert.Equal((0, 2), (original[at], patched[at]));
        }
        finally { Directory.Delete(Path.GetDirectoryName(copy)!, recursive: true); }

        // The build output's copy, as readelf reads it: weak exactly when the system libstdc++ lacks the version.
        bool systemHas = ElfWeakVersion.LibraryHasVersion(ElfWeakVersion.FindSystemLibStdCxx()!, Version);
        Assert.Equal(systemHas ? "none" : "WEAK", ReadElfVersion(OutputLibTorchSharp()).Flags);
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
