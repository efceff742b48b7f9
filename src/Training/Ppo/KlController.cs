namespace Rlhf.Training.Ppo;

/// <summary>Checkpointable state of a <see cref="KlController"/>: the current β (the settings come from the config).</summary>
public sealed record KlControllerState(double Beta);

/// <summary>Chooses the KL penalty coefficient β of r_t = −β·kl_t (Ziegler et al. 2019, §2.2; TRL's <c>*KLController</c>).</summary>
public abstract class KlController
{
    /// <summary>Current β.</summary>
    public double Beta { get; protected set; }

    /// <summary>Feeds the observed KL (mean over sequences of Σ_t kl_t) after a batch of <paramref name="nSteps"/> samples.</summary>
    public abstract void Update(double observedKl, int nSteps);

    /// <summary>State for checkpoints.</summary>
    public KlControllerState State => new(Beta);

    /// <summary>Restores β from a checkpoint.</summary>
    public void Restore(KlControllerState state)
    {
        if (!(state.Beta >= 0)) throw new ArgumentException($"invalid β {state.Beta} in KL controller state", nameof(state));
        Beta = state.Beta;
    }
}

/// <summary>β stays at its initial value (InstructGPT used a fixed β = 0.02).</summary>
public sealed class FixedKlController : KlController
{
    public FixedKlController(double beta)
    {
        if (!(beta >= 0)) throw new ArgumentOutOfRangeException(nameof(beta), beta, "β must be ≥ 0");
        Beta = beta;
    }

    /// <inheritdoc/>
    public override void Update(double observedKl, int nSteps) { }
}

/// <summary>
/// Adaptive β (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. in §2.2):
/// e_t = clip(KL_t/KL_target − 1, −0.2, 0.2), β_{t+1} = β_t·(1 + K_β·e_t) with K_β = n_steps/horizon.
/// </summary>
public sealed class AdaptiveKlController : KlController
{
    /// <summary>KL_target in nats.</summary>
    public double Target { get; }

    /// <summary>Horizon in samples.</summary>
    public double Horizon { get; }

    public AdaptiveKlController(double initBeta, double target, double horizon)
    {
        if (!(initBeta >= 0)) throw new ArgumentOutOfRangeException(nameof(initBeta), initBeta, "β must be ≥ 0");
        if (!(target > 0)) throw new ArgumentOutOfRangeException(nameof(target), target, "target KL must be > 0");
        if (!(horizon > 0)) throw new ArgumentOutOfRangeException(nameof(horizon), horizon, "horizon must be > 0");
        (Beta, Target, Horizon) = (initBeta, target, horizon);
    }

    /// <inheritdoc/>
    public override void Update(double observedKl, int nSteps)
    {
        double proportionalError = Math.Clamp(observedKl / Target - 1, -0.2, 0.2);
        double mult = 1 + proportionalError * nSteps / Horizon;
        Beta *= mult;
    }
}
