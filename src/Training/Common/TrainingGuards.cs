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
        Directory.CreateDirectory(folder);
        return null;
    }
}
