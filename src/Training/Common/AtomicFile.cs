namespace Rlhf.Training.Common;

/// <summary>Writes that either complete or leave the previous file/folder untouched (temp + rename).</summary>
public static class AtomicFile
{
    /// <summary>Writes a file through <paramref name="write"/> into a sibling temp file, then renames it over <paramref name="path"/>.</summary>
    public static void Write(string path, Action<string> write)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileNameWithoutExtension(path)}.{Environment.ProcessId}.tmp{Path.GetExtension(path)}");
        try
        {
            write(tmp);
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    /// <summary>Writes text atomically.</summary>
    public static void WriteAllText(string path, string text) => Write(path, tmp => File.WriteAllText(tmp, text));

    /// <summary>
    /// Builds a folder through <paramref name="fill"/> in a sibling temp folder, then swaps it into place:
    /// the old folder (if any) is renamed aside and deleted only after the new one is in place.
    /// </summary>
    public static void WriteFolder(string folder, Action<string> fill)
    {
        string full = Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar);
        string parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        string name = Path.GetFileName(full);
        string tmp = Path.Combine(parent, $".{name}.{Environment.ProcessId}.tmp");
        string old = Path.Combine(parent, $".{name}.{Environment.ProcessId}.old");
        if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        Directory.CreateDirectory(tmp);
        try
        {
            fill(tmp);
            if (Directory.Exists(full))
            {
                if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
                Directory.Move(full, old);
            }
            Directory.Move(tmp, full);
            if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        }
    }
}
