using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.Sft;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>Figures of one learner update (the iteration's <c>loss/*</c>, <c>policy/*</c>, <c>grad_norm/*</c> metrics), means over minibatches.</summary>
/// <param name="PolicyLoss">clipped surrogate loss</param>
/// <param name="ValueLoss">clipped value loss (null without a critic, as the other critic figures)</param>
/// <param name="ClipFrac">share of tokens whose ratio was clipped</param>
/// <param name="ApproxKl">approximate KL(π_old ‖ π_θ) per token</param>
/// <param name="ValueClipFrac">share of tokens whose value was clipped</param>
/// <param name="Entropy">policy entropy per token (only with an entropy bonus)</param>
/// <param name="PtxLoss">ptx negative log-likelihood (only with ptx_coef &gt; 0)</param>
/// <param name="KlLoss">the KL penalty β·k3 in the loss (only where the estimator puts it there)</param>
/// <param name="GradNormActor">actor gradient norm before clipping, mean over optimizer steps</param>
/// <param name="GradNormCritic">critic gradient norm before clipping, mean over optimizer steps</param>
/// <param name="Updates">optimizer steps taken (fewer than planned when early_stop_kl stopped the epochs)</param>
public sealed record LearnerStats(double PolicyLoss, double? ValueLoss, double ClipFrac, double ApproxKl, double? ValueClipFrac,
    double? Entropy, double? PtxLoss, double? KlLoss, double GradNormActor, double? GradNormCritic, int Updates);

/// <summary>The loss of one minibatch and its parts (scalars; <see cref="Total"/> carries the gradient).</summary>
/// <param name="Total">L = L_pg − c_ent·H + γ_ptx·L_ptx + β·L_kl + c_vf·L_vf (the terms that apply)</param>
public sealed record MinibatchLoss(Tensor Total, Tensor Policy, Tensor? Value, Tensor ClipFrac, Tensor ApproxKl, Tensor? ValueClipFrac,
    Tensor? Entropy, Tensor? Ptx, Tensor? Kl);

/// <summary>
/// The learner: <see cref="PpoConfig.PpoEpochs"/> passes of shuffled minibatches over one experience, the clipped
/// policy and value losses (<see cref="PpoLosses"/>; no value loss without a critic), separate AdamW optimizers for actor and critic, gradient
/// accumulation, clipping, the NaN guard (losses and gradient norms) and early stopping on approximate KL.
/// </summary>
public sealed class PpoLearner : IDisposable
{
    readonly PpoModels _models;
    readonly PpoConfig _cfg;
    readonly PtxBatches? _ptx;
    readonly optim.Optimizer _actorOpt;
    readonly optim.Optimizer? _criticOpt;
    readonly LossAggregation _aggregation;

    /// <summary>A learner for <paramref name="models"/>' actor and critic; <paramref name="ptx"/> adds the pretraining term.</summary>
    public PpoLearner(PpoModels models, PpoConfig cfg, PtxBatches? ptx)
    {
        _models = models;
        _cfg = cfg;
        _ptx = ptx;
        _actorOpt = Optimization.AdamW(models.Actor, new AdamWSettings(cfg.ActorLr, cfg.WeightDecay, cfg.Beta1, cfg.Beta2, cfg.AdamEps));
        _criticOpt = models.Critic is null ? null : Optimization.AdamW(models.Critic, new AdamWSettings(cfg.CriticLr, cfg.WeightDecay, cfg.Beta1, cfg.Beta2, cfg.AdamEps));
        _aggregation = cfg.AdvantageEstimator switch
        {
            AdvantageEstimator.Grpo => LossAggregation.SequenceMeanTokenMean,
            AdvantageEstimator.DrGrpo => LossAggregation.SequenceMeanTokenSumNorm,
            _ => LossAggregation.TokenMean,
        };
    }

    /// <summary>The optimizers by checkpoint file name.</summary>
    public IReadOnlyDictionary<string, optim.Optimizer> Optimizers => _criticOpt is null
        ? new Dictionary<string, optim.Optimizer> { ["actor_optimizer"] = _actorOpt }
        : new Dictionary<string, optim.Optimizer> { ["actor_optimizer"] = _actorOpt, ["critic_optimizer"] = _criticOpt };

    /// <summary>
    /// Updates actor and critic on <paramref name="exp"/> (iteration <paramref name="it"/>, 0-based: it seeds the
    /// minibatch order and picks the ptx batches). <paramref name="checkFinite"/>(what, value) stops the run on a
    /// non-finite loss or gradient norm before any optimizer step takes it.
    /// </summary>
    public LearnerStats Update(Experience exp, int it, Action<string, double> checkFinite)
    {
        var stats = new Dictionary<string, List<double>>();
        void Add(string k, double v) { if (!stats.TryGetValue(k, out var l)) stats[k] = l = []; l.Add(v); }
        int mbPerEpoch = _cfg.RolloutBatch / _cfg.MiniBatch;
        int ptxBatch = it * _cfg.PpoEpochs * mbPerEpoch;   // each minibatch of the run takes the next ptx batch
        bool stop = false;
        int updates = 0;
        for (int epoch = 0; epoch < _cfg.PpoEpochs && !stop; epoch++)
        {
            int[] order = SplitMixRandom.Permutation((int)exp.Rows, _cfg.Seed * 1_000_033 + it * 97 + epoch);
            for (int m = 0; m < mbPerEpoch && !stop; m++)
            {
                if (m % _cfg.GradAccum == 0)
                {
                    Optimization.ClearGrads(_actorOpt);
                    if (_criticOpt is not null) Optimization.ClearGrads(_criticOpt);
                }
                int group = GradAccumulation.GroupSize(m, mbPerEpoch, _cfg.GradAccum);
                using (var scope = NewDisposeScope())
                {
                    var loss = Loss(exp.Select([.. order.Skip(m * _cfg.MiniBatch).Take(_cfg.MiniBatch).Select(x => (long)x)]), _ptx is null ? null : ptxBatch++);
                    (loss.Total / group).backward();
                    double pg = loss.Policy.item<float>(), approxKl = loss.ApproxKl.item<float>();
                    double vf = loss.Value?.item<float>() ?? 0;
                    checkFinite("a loss", double.IsFinite(pg) ? vf : pg);
                    Add("policy", pg);
                    if (loss.Value is not null) Add("value", vf);
                    Add("clipfrac", loss.ClipFrac.item<float>());
                    Add("approxkl", approxKl);
                    if (loss.ValueClipFrac is { } vclip) Add("val_clipfrac", vclip.item<float>());
                    if (loss.Entropy is { } ent) Add("entropy", ent.item<float>());
                    if (loss.Ptx is { } ptx) Add("ptx", ptx.item<float>());
                    if (loss.Kl is { } klLoss) Add("kl", klLoss.item<float>());
                    if (_cfg.EarlyStopKl > 0 && approxKl > _cfg.EarlyStopKl) stop = true;
                }
                if (GradAccumulation.StepsAfter(m, mbPerEpoch, _cfg.GradAccum) || stop)
                {
                    double actorNorm = Optimization.ClipGradNorm(_models.Actor, _cfg.GradClip);
                    double? criticNorm = _models.Critic is null ? null : Optimization.ClipGradNorm(_models.Critic, _cfg.GradClip);
                    checkFinite("the actor's gradient norm", actorNorm);
                    if (criticNorm is double cn) checkFinite("the critic's gradient norm", cn);
                    Add("grad_actor", actorNorm);
                    if (criticNorm is double c) Add("grad_critic", c);
                    _actorOpt.step();
                    _criticOpt?.step();
                    updates++;
                }
            }
        }
        double Mean(string k) => stats[k].Average();
        double? MeanIf(string k) => stats.TryGetValue(k, out var l) ? l.Average() : null;
        return new LearnerStats(Mean("policy"), MeanIf("value"), Mean("clipfrac"), Mean("approxkl"), MeanIf("val_clipfrac"),
            MeanIf("entropy"), MeanIf("ptx"), MeanIf("kl"), Mean("grad_actor"), MeanIf("grad_critic"), updates);
    }

    /// <summary>
    /// The loss of minibatch <paramref name="mb"/> under the current weights: log π_θ over its response tokens (rows
    /// packed, logits / T), the clipped surrogate with the truncated importance weights where the experience has them,
    /// the entropy bonus when <c>entropy_coef</c> &gt; 0, γ_ptx times ptx batch <paramref name="ptxBatch"/>'s NLL when
    /// given, β·k3 to π_ref where the estimator puts the KL in the loss, and c_vf times the clipped value loss with a
    /// critic. Token terms are reduced as the estimator's paper does (<see cref="PpoLosses.Aggregate"/>).
    /// </summary>
    public MinibatchLoss Loss(Experience mb, int? ptxBatch)
    {
        var (packed, index) = mb.Pack();
        using var _ = packed;
        var logits = Temperature.Scale(ExperienceMaker.ResponseLogits(_models.Actor, mb, packed, index), _cfg.Temperature);
        var logp = LogProbs.OfTokens(logits, mb.Responses);
        var (pg, clipFrac, approxKl) = PpoLosses.Policy(logp, mb.LogpOld!, mb.Advantages!, mb.ResponseMask, _cfg.ClipEps, mb.IsWeights, _aggregation, _cfg.MaxNewTokens);
        var actorLoss = pg;
        Tensor? entropy = null, ptxNll = null;
        if (_cfg.EntropyCoef > 0)
        {
            entropy = PpoLosses.Entropy(logits, mb.ResponseMask);
            actorLoss = actorLoss - _cfg.EntropyCoef * entropy;
        }
        if (ptxBatch is int k)
        {
            ptxNll = (_ptx ?? throw new InvalidOperationException("a ptx batch asked for without ptx data")).Nll(_models.Actor, k, _models.Device);   // −mean log π over every token of a ptx batch
            actorLoss = actorLoss + _cfg.PtxCoef * ptxNll;
        }
        Tensor? klLoss = null;
        if (mb.LogpRef is { } logpRef)
        {
            klLoss = PpoLosses.KlPenalty(logp, logpRef, mb.ResponseMask, mb.KlCoef, _aggregation, _cfg.MaxNewTokens);
            actorLoss = actorLoss + klLoss;
        }
        if (_models.Critic is null) return new MinibatchLoss(actorLoss, pg, null, clipFrac, approxKl, null, entropy, ptxNll, klLoss);
        var values = ExperienceMaker.ResponseValues(_models.Critic, mb, packed, index);
        var (vf, vfClip) = PpoLosses.Value(values, mb.ValuesOld!, mb.Returns!, mb.ResponseMask, _cfg.ValueClipEps);
        return new MinibatchLoss(actorLoss + _cfg.VfCoef * vf, pg, vf, clipFrac, approxKl, vfClip, entropy, ptxNll, klLoss);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _actorOpt.Dispose();
        _criticOpt?.Dispose();
    }
}
