using System.Runtime.InteropServices;

namespace Rlhf.Training.Common;

/// <summary>
/// glibc malloc settings for libtorch's CPU tensors. By default glibc serves every block above its mmap threshold
/// (at most 32 MiB, adjusted at run time) with fresh mmap'd pages and unmaps them on free, and trims the heap's free top;
/// a training step then page-faults (and the kernel zeroes) its activation and gradient buffers again every step:
/// perf showed 12–18% of a bf16 step of the 135M config in the kernel, most of it <c>clear_page_erms</c>. Keeping freed
/// memory in the heap lets the next step reuse the same pages. Peak RSS is the same (the buffers are), but memory freed
/// after the peak stays with the process until it exits.
/// </summary>
public static partial class HostAllocator
{
    const int M_TRIM_THRESHOLD = -1, M_MMAP_MAX = -4, M_ARENA_MAX = -8;

    /// <summary>
    /// Whether the user set malloc up through the environment (<c>GLIBC_TUNABLES</c> or any <c>MALLOC_*</c> variable:
    /// glibc's <c>MALLOC_ARENA_MAX</c>, <c>MALLOC_MMAP_THRESHOLD_</c>, … or a preloaded allocator's, such as jemalloc's
    /// <c>MALLOC_CONF</c>); <see cref="KeepFreedMemory"/> then changes nothing.
    /// </summary>
    public static bool LeftToUser() =>
        Environment.GetEnvironmentVariable("GLIBC_TUNABLES") is not null ||
        Environment.GetEnvironmentVariables().Keys.Cast<string>().Any(k => k.StartsWith("MALLOC_", StringComparison.Ordinal));

    /// <summary>
    /// On Linux/glibc, makes malloc serve every thread from the one heap, without mmap for large blocks and without
    /// trimming, unless <see cref="LeftToUser"/>. Returns whether the settings were applied.
    /// </summary>
    public static bool KeepFreedMemory()
    {
        if (!OperatingSystem.IsLinux() || LeftToUser()) return false;
        try
        {
            // one arena: a thread's own arena maps blocks beyond its 64 MiB heaps afresh whatever M_MMAP_MAX says, and
            // the trainer runs on whichever thread the command or server hands it; a trim threshold of −1 never trims
            return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1 && mallopt(M_ARENA_MAX, 1) == 1;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;   // not glibc: its allocator's defaults stay
        }
    }

    /// <summary>Minor page faults of this process so far (Linux: field 10 of /proc/self/stat); null elsewhere.</summary>
    public static long? MinorPageFaults()
    {
        if (!OperatingSystem.IsLinux()) return null;
        string stat = File.ReadAllText("/proc/self/stat");
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');   // fields 3.. follow the command name
        return long.Parse(fields[7], System.Globalization.CultureInfo.InvariantCulture);
    }

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int mallopt(int param, int value);
}
