namespace Rlhf.Export;

/// <summary>
/// Writes an exported folder all at once: everything goes into a hidden sibling temp folder, which is renamed into
/// place when complete. An existing target is an error unless overwriting, in which case the old folder is moved
/// aside first and deleted only after the new one is in place. A failed export leaves no half-written folder.
/// </summary>
public static class ModelFolderWriter
{
    /// <summary>Fills a temp folder with <paramref name="fill"/> and renames it to <paramref name="folder"/>.</summary>
    public static void Write(string folder, bool overwrite, Action<string> fill)
    {
        string full = Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar);
        if (Directory.Exists(full) && !overwrite)
            throw new InvalidOperationException($"The export folder {full} already exists; pass --overwrite (or overwrite: true) to replace it, or choose another --out.");
        if (File.Exists(full)) throw new InvalidOperationException($"{full} is a file, not a folder; choose another --out.");
        string parent = Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{full}' has no parent folder.");
        Directory.CreateDirectory(parent);
        string id = Guid.NewGuid().ToString("N")[..8];
        string tmp = Path.Combine(parent, $".{Path.GetFileName(full)}.export-{id}");
        string old = Path.Combine(parent, $".{Path.GetFileName(full)}.old-{id}");
        Directory.CreateDirectory(tmp);
        try
        {
            fill(tmp);
            bool movedAside = Directory.Exists(full);
            if (movedAside) Directory.Move(full, old);
            try { Directory.Move(tmp, full); }
            catch
            {
                if (movedAside) Directory.Move(old, full);
                throw;
            }
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
        }
    }

    /// <summary>Tokenizer file names copied with the weights (the one list; Training's TokenizerFiles reads it).</summary>
    public static readonly string[] TokenizerFileNames =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
        "tokenizer.model", "vocab.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja", "chat_template.json",
    ];

    /// <summary>Copies the tokenizer files present in <paramref name="from"/> into <paramref name="to"/>; returns their names.</summary>
    public static IReadOnlyList<string> CopyTokenizer(string from, string to)
    {
        if (!Directory.Exists(from)) throw new DirectoryNotFoundException($"Tokenizer folder {from} does not exist.");
        var copied = new List<string>();
        foreach (string name in TokenizerFileNames)
        {
            string src = Path.Combine(from, name);
            if (!File.Exists(src)) continue;
            File.Copy(src, Path.Combine(to, name), overwrite: true);
            copied.Add(name);
        }
        return copied;
    }
}
