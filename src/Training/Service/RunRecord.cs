using System.Text.Json.Nodes;

namespace Rlhf.Training.Service;

/// <summary>Where a run is.</summary>
public enum RunStatus
{
    /// <summary>Waiting for its turn (runs execute one at a time, oldest first).</summary>
    Queued,
    /// <summary>Executing now.</summary>
    Running,
    /// <summary>Finished; its summary.json exists.</summary>
    Succeeded,
    /// <summary>Stopped by an error (see <see cref="RunRecord.Error"/>); resumable from its checkpoint.</summary>
    Failed,
    /// <summary>Stopped at a step boundary on request; resumable from its checkpoint.</summary>
    Cancelled,
}

/// <summary>A run as the server stores it (<c>run.json</c> in the run's folder) and reports it.</summary>
public sealed record RunRecord
{
    /// <summary>The run's id (its folder name under the runs folder).</summary>
    public required string Id { get; init; }
    /// <summary>sft, rm, ppo or pipeline.</summary>
    public required string Stage { get; init; }
    /// <summary>Queue position: runs start in order of this number.</summary>
    public required long Sequence { get; init; }
    /// <summary>Where the run is.</summary>
    public RunStatus Status { get; init; }
    /// <summary>The config as submitted (paths as resolved under --data-root).</summary>
    public required JsonObject Config { get; init; }
    /// <summary>The stage now running (a pipeline's sft, rm, ppo), after the first step.</summary>
    public string? CurrentStage { get; init; }
    /// <summary>Steps done of <see cref="CurrentStage"/>.</summary>
    public int Step { get; init; }
    /// <summary>Steps of <see cref="CurrentStage"/>.</summary>
    public int Total { get; init; }
    /// <summary>A cancel was asked for while it ran (it stops at the next step boundary).</summary>
    public bool CancelRequested { get; init; }
    /// <summary>What went wrong (status failed).</summary>
    public string? Error { get; init; }
    /// <summary>When it was submitted, started (last time), finished (UTC).</summary>
    public DateTimeOffset Created { get; init; }
    /// <summary>When it last started.</summary>
    public DateTimeOffset? Started { get; init; }
    /// <summary>When it last stopped.</summary>
    public DateTimeOffset? Finished { get; init; }
    /// <summary>How many times it was started (a restart or resume adds one).</summary>
    public int Attempts { get; init; }

    /// <summary>No further change without a resume.</summary>
    public bool IsFinal => Status is RunStatus.Succeeded or RunStatus.Failed or RunStatus.Cancelled;
}
