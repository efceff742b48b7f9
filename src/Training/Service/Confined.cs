namespace Rlhf.Training.Service;

/// <summary>
/// Paths a client names, resolved inside a root folder: <c>..</c> that climbs out, absolute paths elsewhere, and
/// symbolic links whose target lies outside are all refused, so a request never reaches a file outside the root.
/// </summary>
public static class Confined
{
    /// <summary>
    /// <paramref name="path"/> (relative to <paramref name="root"/>, or absolute) as a full path inside
    /// <paramref name="root"/>, or null when it leads outside (lexically or through a symbolic link).
    /// </summary>
    public static string? Resolve(string root, string path)
    {
        if (path.Length == 0 || path.Contains('\0')) return null;
        string rootFull = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        string full = Path.GetFullPath(path, rootFull);
        if (!Within(rootFull, full)) return null;
        // every component below the root that exists and is a link must point inside the root
        string current = rootFull;
        foreach (string part in Path.GetRelativePath(rootFull, full).Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
        {
            if (part == ".") continue;
            current = Path.Combine(current, part);
            FileSystemInfo info = Directory.Exists(current) ? new DirectoryInfo(current) : new FileInfo(current);
            if (!info.Exists || info.LinkTarget is null) continue;
            var target = info.ResolveLinkTarget(returnFinalTarget: true);
            if (target is null || !Within(rootFull, Path.GetFullPath(target.FullName))) return null;
        }
        return full;
    }

    static bool Within(string root, string full) =>
        full == root || full.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal);
}
