namespace Rlhf.Export;

/// <summary>
/// The one way files are written: into a hidden sibling temp file (same folder, so the rename stays on one file
/// system), flushed, then renamed over the target. Readers see the old file or the whole new one, never a part, and a
/// failed write leaves no temp file behind.
/// </summary>
public static class AtomicFile
{
    /// <summary>Writes through <paramref name="write"/>, which receives the temp path, then renames it to <paramref name="path"/>.</summary>
    public static void Write(string path, Action<string> write)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{full}' has no parent folder.", nameof(path));
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileNameWithoutExtension(full)}.{Guid.NewGuid():N}.tmp{Path.GetExtension(full)}");
        try
        {
            write(tmp);
            File.Move(tmp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    /// <summary>Writes through a stream (flushed to disk before the rename).</summary>
    public static void WriteStream(string path, Action<Stream> write, int bufferSize = 1 << 16) => Write(path, tmp =>
    {
        using var stream = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize);
        write(stream);
        stream.Flush(flushToDisk: true);
    });

    /// <summary>Writes UTF-8 text (no byte-order mark).</summary>
    public static void WriteAllText(string path, string text) => Write(path, tmp => File.WriteAllText(tmp, text));

    /// <summary>Writes bytes.</summary>
    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, tmp => File.WriteAllBytes(tmp, bytes));
}
