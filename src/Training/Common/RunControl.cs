namespace Rlhf.Training.Common;

/// <summary>Test hooks that shape a run without being part of its config.</summary>
public sealed record RunControl
{
    /// <summary>Continue from the output folder's checkpoint.</summary>
    public bool Resume { get; init; }
    /// <summary>Replace a non-empty output folder.</summary>
    public bool Overwrite { get; init; }
    /// <summary>Stop (as if killed) right after the checkpoint of this step; 0 = never. Used by resume tests.</summary>
    public int StopAfterStep { get; init; }
    /// <summary>Show a progress bar.</summary>
    public bool Progress { get; init; } = true;
}

/// <summary>Thrown by a trainer right after the checkpoint of <see cref="RunControl.StopAfterStep"/>, standing in for a kill.</summary>
internal sealed class SimulatedKill(int step) : Exception($"stopped after step {step}");
