// Marks one required symbol version of an ELF64 shared library as weak (VER_FLG_WEAK), so the dynamic loader
// accepts a system library that lacks it. Used by the build (Directory.Build.targets) for TorchSharp-cpu 0.107's
// libLibTorchSharp.so, which asks for GLIBCXX_3.4.32 only for `_ZSt21ios_base_library_initv`, a symbol with no
// relocations: Debian 12 ships GLIBCXX_3.4.30. Compiled both by MSBuild's RoslynCodeTaskFactory and by the tests.
#nullable enable
using System;
using System.IO;
using System.Text;

namespace Rlhf.Build
{
    public static class ElfWeakVersion
    {
        const uint ShtGnuVerneed = 0x6ffffffe;
        const ushort VerFlgWeak = 0x2;

        /// <summary>True when the library file defines the given version name (e.g. GLIBCXX_3.4.32).</summary>
        public static bool LibraryHasVersion(string libraryPath, string version)
        {
            byte[] bytes = File.ReadAllBytes(libraryPath);
            byte[] needle = Encoding.ASCII.GetBytes(version + "\0");
            return IndexOf(bytes, needle) >= 0;
        }

        /// <summary>First libstdc++.so.6 found in the standard library folders, or null.</summary>
        public static string? FindSystemLibStdCxx()
        {
            string[] dirs = { "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                              "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib" };
            foreach (string d in dirs)
            {
                string p = Path.Combine(d, "libstdc++.so.6");
                if (File.Exists(p)) return p;
            }
            return null;
        }

        /// <summary>
        /// Reads the version-needed flags of <paramref name="version"/> in an ELF64 little-endian file.
        /// Returns null when the file does not require that version.
        /// </summary>
        public static ushort? ReadNeededFlags(byte[] elf, string version)
        {
            int at = FindVernaux(elf, version);
            return at < 0 ? null : BitConverter.ToUInt16(elf, at + 4);
        }

        /// <summary>
        /// Sets VER_FLG_WEAK on the vernaux entry naming <paramref name="version"/>. Returns true if the bytes changed.
        /// </summary>
        public static bool MarkWeak(byte[] elf, string version)
        {
            int at = FindVernaux(elf, version);
            if (at < 0) return false;
            ushort flags = BitConverter.ToUInt16(elf, at + 4);
            if ((flags & VerFlgWeak) != 0) return false;
            flags |= VerFlgWeak;
            elf[at + 4] = (byte)(flags & 0xff);
            elf[at + 5] = (byte)(flags >> 8);
            return true;
        }

        /// <summary>Patches the file in place (via a temp file and rename). Returns true if it changed.</summary>
        public static bool MarkWeakInFile(string path, string version)
        {
            byte[] bytes = File.ReadAllBytes(path);
            if (!MarkWeak(bytes, version)) return false;
            string tmp = path + ".tmp";
            File.WriteAllBytes(tmp, bytes);
            File.Delete(path);
            File.Move(tmp, path);
            return true;
        }

        // Offset of the Elf64_Vernaux whose name is `version`, or -1.
        static int FindVernaux(byte[] elf, string version)
        {
            if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
                throw new InvalidDataException("not an ELF file");
            if (elf[4] != 2 || elf[5] != 1) throw new InvalidDataException("only ELF64 little-endian is supported");
            long shoff = BitConverter.ToInt64(elf, 0x28);
            int shentsize = BitConverter.ToUInt16(elf, 0x3A);
            int shnum = BitConverter.ToUInt16(elf, 0x3C);
            for (int i = 0; i < shnum; i++)
            {
                int sh = checked((int)(shoff + (long)i * shentsize));
                uint type = BitConverter.ToUInt32(elf, sh + 4);
                if (type != ShtGnuVerneed) continue;
                int offset = checked((int)BitConverter.ToInt64(elf, sh + 0x18));
                int link = (int)BitConverter.ToUInt32(elf, sh + 0x28);
                int count = (int)BitConverter.ToUInt32(elf, sh + 0x2C);
                int strsh = checked((int)(shoff + (long)link * shentsize));
                int strOffset = checked((int)BitConverter.ToInt64(elf, strsh + 0x18));
                int vn = offset;
                for (int n = 0; n < count; n++)
                {
                    int cnt = BitConverter.ToUInt16(elf, vn + 2);
                    int aux = vn + (int)BitConverter.ToUInt32(elf, vn + 8);
                    for (int a = 0; a < cnt; a++)
                    {
                        int name = (int)BitConverter.ToUInt32(elf, aux + 8);
                        if (CStringEquals(elf, strOffset + name, version)) return aux;
                        uint next = BitConverter.ToUInt32(elf, aux + 12);
                        if (next == 0) break;
                        aux += (int)next;
                    }
                    uint vnNext = BitConverter.ToUInt32(elf, vn + 12);
                    if (vnNext == 0) break;
                    vn += (int)vnNext;
                }
            }
            return -1;
        }

        static bool CStringEquals(byte[] b, int at, string s)
        {
            for (int i = 0; i < s.Length; i++)
                if (at + i >= b.Length || b[at + i] != (byte)s[i]) return false;
            return at + s.Length < b.Length && b[at + s.Length] == 0;
        }

        static int IndexOf(byte[] hay, byte[] needle)
        {
            for (int i = 0; i + needle.Length <= hay.Length; i++)
            {
                int j = 0;
                while (j < needle.Length && hay[i + j] == needle[j]) j++;
                if (j == needle.Length) return i;
            }
            return -1;
        }
    }

#if !RLHF_ELF_NO_TASK
    /// <summary>
    /// MSBuild task: patch <see cref="File"/> when the system libstdc++ lacks <see cref="Version"/>, or with
    /// <see cref="Always"/> whatever this machine has (a published tool runs on other machines; a weak requirement
    /// changes nothing where the version exists).
    /// </summary>
    public sealed class MarkElfVersionWeak : Microsoft.Build.Utilities.Task
    {
        [Microsoft.Build.Framework.Required] public string File { get; set; } = "";
        [Microsoft.Build.Framework.Required] public string Version { get; set; } = "";
        public bool Always { get; set; }

        public override bool Execute()
        {
            if (!System.IO.File.Exists(File)) return true;
            string? sys = ElfWeakVersion.FindSystemLibStdCxx();
            if (!Always && (sys == null || ElfWeakVersion.LibraryHasVersion(sys, Version))) return true;
            if (ElfWeakVersion.MarkWeakInFile(File, Version))
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.High,
                    $"rlhf: marked the {Version} requirement weak in {File}" + (Always ? "" : $" ({sys} lacks it)") +
                    " (see docs/troubleshooting.md, 'TorchSharp on Debian 12').");
            return true;
        }
    }
#endif
}
