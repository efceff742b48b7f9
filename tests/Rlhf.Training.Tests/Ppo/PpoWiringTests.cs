using Rlhf.Inference.Rollout;
using Rlhf.Training.Model;
using Rlhf.Training.Ppo;
using Rlhf.Training.Tests.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>
/// The wiring between the pure pieces (Gae, Kl, PpoLosses, Tis, Masked): one <see cref="ExperienceMaker.Make"/> and one
/// <see cref="PpoLearner"/> minibatch on a two-row batch, compared with the same quantities assembled by hand here from
/// each row's own unpadded forward pass (double-precision loops for GAE and whitening).
/// </summary>
public sealed class PpoWiringTests
{
    static readonly int[][] Prompts = [[3, 4, 5, 6], [7, 8]];
    static readonly int[][] Responses = [[9, 10, 11], [12, 13]];
    static readonly float[] Scores = [1.5f, -0.5f];
    /// <summary>log π_old − log π_rollout per response token: exp(0.3) = 1.35 exceeds a cap of 1.2, the others do not.</summary>
    static readonly double[][] EngineOffsets = [[0.3, 0.0, -0.1], [0.05, 0.3]];

    static PpoConfig Config(double tisCap = 1.2, bool whiten = true) => new()
    {
        RolloutBatch = 2, MiniBatch = 2, PpoEpochs = 1, Temperature = 0.7, Gamma = 0.95, Lambda = 0.9, WhitenAdvantages = whiten,
        KlEstimator = KlEstimator.K1, TisCap = tisCap, ClipEps = 0.2, ValueClipEps = 0.2, VfCoef = 0.1, EntropyCoef = 0.01,
        ActorLr = 1e-3, CriticLr = 1e-3, GradClip = 1.0, Seed = 3,
    };

    sealed class Fixture : IDisposable
    {
        public required PpoModels Models { get; init; }
        public void Dispose()
        {
            Models.Actor.Dispose();
            Models.Reference.Dispose();
            Models.Critic?.Dispose();
        }
    }

    static Fixture Models()
    {
        var cfg = TinyModels.Config();
        var critic = LlamaForSequenceClassification.Create(cfg, CPU, ScalarType.Float32, 5);
        TinyModels.Scramble(critic, 5);
        critic.eval();
        // the rollout and reward services are not used by the experience maker or the learner
        return new Fixture
        {
            Models = new PpoModels
            {
                Device = CPU, Tokenizer = null!, PadId = 0, Actor = TinyModels.Randomized(cfg, 6), Reference = TinyModels.Randomized(cfg, 7),
                Critic = critic, Rollouts = null!, Rewards = null!,
            },
        };
    }

    /// <summary>Per row: log softmax(logits/T)[token] of each response token, and V of the state before it, from the row alone.</summary>
    static (Tensor[] Logp, Tensor[] Values, Tensor[] Logits) ByHand(LlamaForCausalLM actor, LlamaForSequenceClassification? critic, double temperature)
    {
        var logp = new Tensor[Prompts.Length];
        var values = new Tensor[Prompts.Length];
        var logits = new Tensor[Prompts.Length];
        for (int i = 0; i < Prompts.Length; i++)
        {
            int p = Prompts[i].Length, a = Responses[i].Length, l = p + a;
            var ids = tensor(Prompts[i].Concat(Responses[i]).Select(x => (long)x).ToArray(), [1, l]);
            var mask = ones(1, l, dtype: ScalarType.Int64);
            var pos = arange(l, dtype: ScalarType.Int64).unsqueeze(0);
            var z = actor.Forward(ids, mask, pos)[0].narrow(0, p - 1, a) / temperature;     // [a, V]
            logits[i] = z;
            var tokens = tensor(Responses[i].Select(x => (long)x).ToArray());
            logp[i] = nn.functional.log_softmax(z, -1).gather(1, tokens.unsqueeze(1)).squeeze(1);
            if (critic is not null) values[i] = critic.Values(ids, mask, pos)[0].narrow(0, p - 1, a);
        }
        return (logp, values, logits);
    }

    static double[] D(Tensor t) => [.. t.detach().to_type(ScalarType.Float64).data<double>()];

    static ScoredRollouts Scored(Tensor[] logpOld)
    {
        var results = Prompts.Select((p, i) => new RolloutResult(p, Responses[i], null,
            [.. D(logpOld[i]).Select((x, t) => (float)(x - EngineOffsets[i][t]))], RolloutFinishReason.Eos, new RolloutTimings(0, 0, 2, 0))).ToArray();
        var batch = new RolloutBatch(["a", "b"], Prompts, results);
        return new ScoredRollouts(batch, ["", ""], [true, true], Scores, Scores);
    }

    /// <summary>Row i of a [B, A] tensor, its first n entries.</summary>
    static double[] Row(Tensor t, int i, int n) => [.. D(t[i]).Take(n)];

    [Fact]
    public void ExperienceHasGaeReturnsFromUnwhitenedAdvantagesWhitenedAdvantagesAndTruncatedWeights()
    {
        using var f = Models();
        using var _ = NewDisposeScope();
        var cfg = Config();
        const double beta = 0.05;
        using var __ = no_grad();
        var (lp, v, _) = ByHand(f.Models.Actor, f.Models.Critic, cfg.Temperature);
        var (lr, _, _) = ByHand(f.Models.Reference, null, cfg.Temperature);
        var (exp, stats) = new ExperienceMaker(f.Models, cfg).Make(Scored(lp), beta);
        using var e = exp;

        // rewards r_t = −β(log π_old − log π_ref), + score at the last token; GAE backwards with V = 0 after the end
        var adv = new List<double[]>();
        var ret = new List<double[]>();
        double klSum = 0;
        for (int i = 0; i < 2; i++)
        {
            double[] logp = D(lp[i]), logpRef = D(lr[i]), values = D(v[i]);
            int n = logp.Length;
            double[] r = [.. logp.Select((x, t) => -beta * (x - logpRef[t]) + (t == n - 1 ? Scores[i] : 0))];
            klSum += logp.Select((x, t) => x - logpRef[t]).Sum();
            var a = new double[n];
            double next = 0, gae = 0;
            for (int t = n - 1; t >= 0; t--)
            {
                gae = r[t] + cfg.Gamma * next - values[t] + cfg.Gamma * cfg.Lambda * gae;
                a[t] = gae;
                next = values[t];
            }
            adv.Add(a);
            ret.Add([.. a.Select((x, t) => x + values[t])]);
            AssertClose(logp, Row(e.LogpOld!, i, n), 2e-5, "log π_old");
            AssertClose(values, Row(e.ValuesOld!, i, n), 2e-5, "V_old");
            AssertClose(ret[i], Row(e.Returns!, i, n), 1e-4, "returns = A + V_old from the unwhitened A");
        }
        double[] all = [.. adv.SelectMany(x => x)];
        double mean = all.Average(), var = all.Sum(x => (x - mean) * (x - mean)) / (all.Length - 1);
        for (int i = 0; i < 2; i++)
        {
            AssertClose([.. adv[i].Select(x => (x - mean) / Math.Sqrt(var + 1e-8))], Row(e.Advantages!, i, adv[i].Length), 1e-4, "whitened advantages");
            AssertClose([.. EngineOffsets[i].Select(o => Math.Min(Math.Exp(o), cfg.TisCap))], Row(e.IsWeights!, i, adv[i].Length), 1e-4, "TIS weights");
        }
        Assert.Equal(klSum / 2, stats.Kl, 4);
        Assert.Equal(2.0 / 5, stats.IsWeightClipFrac, 6);   // two of five tokens over the cap

        // without a cap the weights are measured but not applied; without whitening the advantages are GAE's own
        var (plain, _) = new ExperienceMaker(f.Models, Config(tisCap: 0, whiten: false)).Make(Scored(lp), beta);
        using var p = plain;
        Assert.Null(p.IsWeights);
        for (int i = 0; i < 2; i++) AssertClose(adv[i], Row(p.Advantages!, i, adv[i].Length), 1e-4, "unwhitened advantages");
    }

    [Theory]
    [InlineData(AdvantageEstimator.Grpo)]
    [InlineData(AdvantageEstimator.Rloo)]
    [InlineData(AdvantageEstimator.ReinforcePp)]
    public void CriticFreeExperienceHasTheEstimatorsAdvantagesAndNoValues(AdvantageEstimator estimator)
    {
        using var f = Models();
        using var _ = NewDisposeScope();
        var models = new PpoModels
        {
            Device = CPU, Tokenizer = null!, PadId = 0, Actor = f.Models.Actor, Reference = f.Models.Reference, Critic = null, Rollouts = null!, Rewards = null!,
        };
        var cfg = Config() with { AdvantageEstimator = estimator, NSamplesPerPrompt = 2 };   // the two rows form one group
        const double beta = 0.05;
        using var __ = no_grad();
        var (lp, _, _) = ByHand(f.Models.Actor, null, cfg.Temperature);
        var (lr, _, _) = ByHand(f.Models.Reference, null, cfg.Temperature);
        var (exp, stats) = new ExperienceMaker(models, cfg).Make(Scored(lp), beta);
        using var e = exp;
        Assert.Null(e.ValuesOld);
        Assert.Null(e.Returns);
        Assert.Null(stats.ExplainedVariance);
        Assert.Equal(estimator == AdvantageEstimator.Grpo, e.LogpRef is not null);   // grpo keeps log π_ref for the KL in its loss
        double[][] expected;
        if (estimator == AdvantageEstimator.Grpo)
        {
            double mean = (Scores[0] + Scores[1]) / 2.0, std = Math.Sqrt(Math.Pow(Scores[0] - mean, 2) + Math.Pow(Scores[1] - mean, 2));   // unbiased, k = 2
            expected = [.. Enumerable.Range(0, 2).Select(i => Enumerable.Repeat((Scores[i] - mean) / (std + 1e-4), Responses[i].Length).ToArray())];
        }
        else
        {
            // returns-to-go of r_t = −β(log π − log π_ref) + score' at the last token; rloo's score' = s_i − s_other
            expected = new double[2][];
            for (int i = 0; i < 2; i++)
            {
                double[] logp = D(lp[i]), logpRef = D(lr[i]);
                int n = logp.Length;
                double score = estimator == AdvantageEstimator.Rloo ? Scores[i] - Scores[1 - i] : Scores[i];
                double[] r = [.. logp.Select((x, t) => -beta * (x - logpRef[t]) + (t == n - 1 ? score : 0))];
                expected[i] = [.. Enumerable.Range(0, n).Select(t => r.Skip(t).Sum())];
            }
            if (estimator is AdvantageEstimator.ReinforcePp or AdvantageEstimator.Rloo)   // rloo: whiten_advantages (true here)
            {
                double[] all = [.. expected.SelectMany(x => x)];
                double mean = all.Average(), var = all.Sum(x => (x - mean) * (x - mean)) / (all.Length - 1);
                expected = [.. expected.Select(row => row.Select(x => (x - mean) / Math.Sqrt(var + 1e-8)).ToArray())];
            }
        }
        for (int i = 0; i < 2; i++) AssertClose(expected[i], Row(e.Advantages!, i, expected[i].Length), 1e-4, $"{estimator} advantages");
    }

    [Fact]
    public void MinibatchLossAndGradientEqualTheHandAssembledObjective()
    {
        using var f = Models();
        using var _ = NewDisposeScope();
        var cfg = Config();
        Tensor[] lpOld;
        using (no_grad()) lpOld = ByHand(f.Models.Actor, f.Models.Critic, cfg.Temperature).Logp;
        var (exp, _) = new ExperienceMaker(f.Models, cfg).Make(Scored(lpOld), 0.05);
        using var e = exp;
        // move π_old and V_old off the current weights so that both clips bite on some tokens
        e.LogpOld = e.LogpOld! + tensor(new float[] { 0.4f, -0.05f, -0.3f, 0.1f, 0, 0 }, [2, 3]) * e.ResponseMask;
        e.ValuesOld = e.ValuesOld! + tensor(new float[] { 0.5f, 0, -0.3f, 0.1f, -0.6f, 0 }, [2, 3]) * e.ResponseMask;
        using var learner = new PpoLearner(f.Models, cfg, ptx: null);
        var parameters = f.Models.Actor.parameters().Concat(f.Models.Critic!.parameters()).ToArray();

        var loss = learner.Loss(e, ptxBatch: null);
        loss.Total.backward();
        var grads = parameters.Select(q => q.grad!.clone()).ToArray();
        foreach (var q in parameters) q.grad!.zero_();

        // by hand: token-level means over the 5 response tokens of the minibatch
        var (lp, v, logits) = ByHand(f.Models.Actor, f.Models.Critic, cfg.Temperature);
        Tensor pgSum = zeros(1), vfSum = zeros(1), entSum = zeros(1);
        for (int i = 0; i < 2; i++)
        {
            int n = Responses[i].Length;
            var old = e.LogpOld![i].narrow(0, 0, n).detach();
            var a = e.Advantages![i].narrow(0, 0, n);
            var w = e.IsWeights![i].narrow(0, 0, n);
            var ratio = (lp[i] - old).exp();
            pgSum = pgSum + (maximum(-a * ratio, -a * ratio.clamp(1 - cfg.ClipEps, 1 + cfg.ClipEps)) * w).sum();
            var vOld = e.ValuesOld![i].narrow(0, 0, n);
            var r = e.Returns![i].narrow(0, 0, n);
            var vClip = vOld + (v[i] - vOld).clamp(-cfg.ValueClipEps, cfg.ValueClipEps);
            vfSum = vfSum + maximum((v[i] - r).square(), (vClip - r).square()).sum();
            var logSoft = nn.functional.log_softmax(logits[i], -1);
            entSum = entSum - (logSoft.exp() * logSoft).sum();
        }
        var handPg = pgSum / 5;
        var handVf = 0.5 * vfSum / 5;
        var handEnt = entSum / 5;
        var handTotal = handPg - cfg.EntropyCoef * handEnt + cfg.VfCoef * handVf;
        Assert.Equal(handPg.item<float>(), loss.Policy.item<float>(), 4);
        Assert.Equal(handVf.item<float>(), loss.Value!.item<float>(), 4);
        Assert.Equal(handEnt.item<float>(), loss.Entropy!.item<float>(), 4);
        Assert.Equal(handTotal.item<float>(), loss.Total.item<float>(), 4);
        Assert.True(loss.ClipFrac.item<float>() > 0 && loss.ValueClipFrac!.item<float>() > 0, "both clips must bite for the comparison to cover them");
        handTotal.sum().backward();
        for (int k = 0; k < parameters.Length; k++)
        {
            double scale = Math.Max(1e-3, grads[k].abs().max().item<float>());
            double diff = (grads[k] - parameters[k].grad!).abs().max().item<float>();
            Assert.True(diff < 1e-3 * scale, $"parameter {k}: gradient differs by {diff} (max |g| {scale})");
        }
    }

    [Fact]
    public void PtxTermEntersTheActorLossOnly()
    {
        using var f = Models();
        using var _ = NewDisposeScope();
        var cfg = Config() with { PtxCoef = 0.3 };
        Tensor[] lpOld;
        using (no_grad()) lpOld = ByHand(f.Models.Actor, null, cfg.Temperature).Logp;
        var (exp, _) = new ExperienceMaker(f.Models, cfg).Make(Scored(lpOld), 0.05);
        using var e = exp;
        var ptx = new PtxBatches([.. Enumerable.Range(0, 40).Select(i => 3 + i % 40)], seqLen: 6, batchSize: 2, seed: 1);
        using var learner = new PpoLearner(f.Models, cfg, ptx);
        var with = learner.Loss(e, ptxBatch: 0);
        var without = learner.Loss(e, ptxBatch: null);
        // −mean log π over the ptx batch's predicted tokens, by hand
        var ids = ptx.Batch(0, CPU);
        var logSoft = nn.functional.log_softmax(f.Models.Actor.Forward(ids, ones_like(ids), arange(6, dtype: ScalarType.Int64).unsqueeze(0).expand(2, 6)), -1);
        double nll = -logSoft.narrow(1, 0, 5).gather(2, ids.narrow(1, 1, 5).unsqueeze(2)).mean().item<float>();
        Assert.Equal(nll, with.Ptx!.item<float>(), 4);
        Assert.Equal(cfg.PtxCoef * nll, with.Total.item<float>() - without.Total.item<float>(), 4);
        // the critic's gradient is the same with and without the term; the actor's is not
        Tensor[] Grads(MinibatchLoss l, nn.Module m)
        {
            foreach (var q in m.parameters()) q.grad?.zero_();
            l.Total.backward(retain_graph: true);
            return [.. m.parameters().Select(q => q.grad!.clone())];
        }
        var criticWith = Grads(with, f.Models.Critic!);
        var criticWithout = Grads(without, f.Models.Critic!);
        Assert.All(criticWith.Zip(criticWithout), g => Assert.True(g.First.allclose(g.Second, rtol: 1e-5, atol: 1e-7)));
        var actorWith = Grads(with, f.Models.Actor);
        var actorWithout = Grads(without, f.Models.Actor);
        Assert.Contains(actorWith.Zip(actorWithout), g => !g.First.allclose(g.Second, rtol: 1e-3, atol: 1e-6));
    }

    [Fact]
    public void TheNanGuardSeesGradientNormsBeforeTheOptimizerSteps()
    {
        using var f = Models();
        var cfg = Config();
        Tensor[] lpOld;
        using (no_grad()) lpOld = ByHand(f.Models.Actor, null, cfg.Temperature).Logp;
        var (exp, _) = new ExperienceMaker(f.Models, cfg).Make(Scored(lpOld), 0.05);
        using var e = exp;
        using var learner = new PpoLearner(f.Models, cfg, ptx: null);
        var before = f.Models.Actor.parameters().Select(p => p.detach().clone()).ToArray();
        var seen = new List<string>();
        var error = Assert.Throws<InvalidOperationException>(() => learner.Update(e, 0, (what, value) =>
        {
            seen.Add(what);
            if (what.Contains("gradient norm")) throw new InvalidOperationException($"{what} = {value}");
        }));
        Assert.Equal(["a loss", "the actor's gradient norm"], seen);
        // the guard stopped the update before any optimizer step: the weights are unchanged
        Assert.All(f.Models.Actor.parameters().Zip(before), pair => Assert.True(pair.First.detach().allclose(pair.Second, rtol: 0, atol: 0)));
        Assert.Contains("actor's gradient norm", error.Message);
    }

    [Fact]
    public void EarlyStopOnKlEndsTheEpochsAfterTheMinibatchThatPassedIt()
    {
        using var f = Models();
        var cfg = Config() with { PpoEpochs = 3, MiniBatch = 1, EarlyStopKl = 0.01 };   // 6 minibatches planned
        Tensor[] lpOld;
        using (no_grad()) lpOld = ByHand(f.Models.Actor, null, cfg.Temperature).Logp;
        var (exp, _) = new ExperienceMaker(f.Models, cfg).Make(Scored(lpOld), 0.05);
        using var e = exp;
        // π_old 0.5 nats away from π on every token: approx KL = ½·0.25 > 0.01 from the first minibatch on
        using (no_grad()) e.LogpOld = e.LogpOld! + 0.5f * e.ResponseMask;
        using var learner = new PpoLearner(f.Models, cfg, ptx: null);
        var stats = learner.Update(e, 0, (_, _) => { });
        Assert.Equal(1, stats.Updates);
        Assert.True(stats.ApproxKl > cfg.EarlyStopKl);
        using var again = new PpoLearner(f.Models, cfg with { EarlyStopKl = 0 }, ptx: null);
        Assert.Equal(6, again.Update(e, 0, (_, _) => { }).Updates);   // off: every minibatch steps
    }

    [Fact]
    public void InBf16TheFirstMinibatchRatioIsOneAndTheKlToTheReferenceIsZero()
    {
        using var f = Models();
        using var _ = NewDisposeScope();
        var cfg = Config() with { Precision = Precision.Bf16 };
        f.Models.Actor.Precision = f.Models.Reference.Precision = f.Models.Critic!.Precision = Precision.Bf16;
        // the reference starts as the actor (the SFT model): copy the actor's weights into it
        using (no_grad())
            foreach (var (dst, src) in f.Models.Reference.parameters().Zip(f.Models.Actor.parameters())) dst.copy_(src);
        Tensor[] lpOld;
        using (no_grad()) lpOld = ByHand(f.Models.Actor, null, cfg.Temperature).Logp;
        var (exp, stats) = new ExperienceMaker(f.Models, cfg).Make(Scored(lpOld), 0.05);
        using var e = exp;
        Assert.Equal(0, stats.Kl);
        using var learner = new PpoLearner(f.Models, cfg, ptx: null);
        var loss = learner.Loss(e.Select([1, 0]), ptxBatch: null);   // the learner's minibatches are permuted rows
        Assert.Equal(0, loss.ApproxKl.item<float>());
        Assert.Equal(0, loss.ClipFrac.item<float>());
    }

    static void AssertClose(double[] expected, double[] actual, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tol * Math.Max(1, Math.Abs(expected[i])), $"{what}[{i}]: expected {expected[i]}, got {actual[i]}");
    }
}
