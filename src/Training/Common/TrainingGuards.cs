namespace Rlhf.Training.Common;

/// <summary>Raised when a loss or gradient norm is NaN/Inf: the run stops, and the last checkpoint stays as it was.</summary>
public sealed class NonFiniteLossException(string stage, int step, string what, double value, string? checkpoint)
    : Exception($"{stage}: {what} became {value} at step {step}; training stopped. " +
                (checkpoint is null ? "No checkpoint had been written yet. " : $"The last checkpoint is intact at {checkpoint} (resume with --resume). ") +
                "Lower the learning rate or enable gradient clipping.")
{
    /// <summary>Optimizer step at which the value became non-finite.</summary>
    public int Step { get; } = step;
}

/// <summary>Decides what happens to an existing output folder.</summary>
public static class OutputFolder
{
    /// <summary>
    /// Prepares <paramref name="folder"/>: fine when missing or empty; with <paramref name="resume"/> it must hold a
    /// checkpoint; with <paramref name="overwrite"/> it is cleared; otherwise an existing non-empty folder is an error.
    /// Returns the checkpoint folder to resume from, or null.
    /// </summary>
    public static string? Prepare(string folder, bool resume, bool overwrite, string checkpointName = "checkpoint")
    {
        string ckpt = Path.Combine(folder, checkpointName);
        if (resume)
        {
            if (!Directory.Exists(ckpt))
                throw new InvalidOperationException($"--resume: no checkpoint at {ckpt}. Run without --resume to start fresh.");
            return ckpt;
        }
        if (Directory.Exists(folder) && Directory.EnumerateFileSystemEntries(folder).Any())
        {
            if (!overwrite)
                throw new InvalidOperationException(
                    $"Output folder {folder} is not empty. Pass --resume to continue its checkpoint, --overwrite to replace it, or choose another --out.");
            Directory.Delete(folder, recursive: true);
        }
        Create(folder);
        return null;
    }

    /// <summary>Creates <paramref name="folder"/> for this run; <see cref="CleanOnFailure"/> removes it again if the run fails.</summary>
    public static void Create(string folder)
    {
        if (!Directory.Exists(folder)) created.Value?.Add(Path.GetFullPath(folder));
        Directory.CreateDirectory(folder);
    }

    /// <summary>Folders that <see cref="Create"/> created (fresh or cleared) inside the current <see cref="CleanOnFailure"/>.</summary>
    static readonly AsyncLocal<HashSet<string>?> created = new();

    /// <summary>
    /// Runs a stage that writes into <paramref name="folder"/> and, when it fails, removes the folder if
    /// <see cref="Prepare"/> made it for this run (fresh, or cleared by --overwrite) and it holds nothing that
    /// <paramref name="keep"/> calls resumable (by default a checkpoint). A failed run thus leaves nothing, the folder
    /// as it was, or something --resume can continue; never a half-written folder.
    /// </summary>
    public static T CleanOnFailure<T>(string folder, Func<T> body, Func<string, bool>? keep = null)
    {
        keep ??= f => Directory.Exists(Path.Combine(f, "checkpoint"));
        var outer = created.Value;
        created.Value = new HashSet<string>(StringComparer.Ordinal);
        try { return body(); }
        catch
        {
            string full = Path.GetFullPath(folder);
            if (created.Value.Contains(full) && Directory.Exists(full) && !keep(full))
                try { Directory.Delete(full, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
        finally { created.Value = outer; }
    }
}
