namespace Rlhf.Training.Common;

/// <summary>
/// The files the project ships under <c>models/</c> (model configs, pipeline configs): a relative path such as
/// <c>models/tiny/config.json</c> names the file in the working folder when it is there, else the first one found from
/// the rlhf binary's folder upwards (the build output and the installed tool carry <c>models/</c>; a binary inside a
/// clone finds the clone's).
/// </summary>
public static class ShippedFiles
{
    /// <summary><paramref name="path"/> as found by the rule above, or null when it is nowhere.</summary>
    public static string? Find(string path)
    {
        if (File.Exists(path)) return path;
        if (Path.IsPathRooted(path)) return null;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, path);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }
}
