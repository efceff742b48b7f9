using Rlhf.Export;

namespace Rlhf.Training.Common;

/// <summary>The tokenizer files a Hugging Face model folder may hold, copied along with weights.</summary>
public static class TokenizerFiles
{
    /// <summary>File names recognised as tokenizer files (one list, kept by the export side).</summary>
    public static IReadOnlyList<string> Names => Rlhf.Export.ModelFolderWriter.TokenizerFileNames;

    /// <summary>Copies every tokenizer file present in <paramref name="from"/> into <paramref name="to"/> (no-op when the same folder).</summary>
    public static void Copy(string from, string to)
    {
        if (Path.GetFullPath(from).TrimEnd('/') == Path.GetFullPath(to).TrimEnd('/')) return;
        Directory.CreateDirectory(to);
        foreach (string name in Names)
        {
            string src = Path.Combine(from, name);
            if (File.Exists(src)) AtomicFile.Write(Path.Combine(to, name), tmp => File.Copy(src, tmp, overwrite: true));
        }
    }
}
