using Rlhf.Training.Common;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Ppo;

/// <summary>Prompts and the responses sampled for them, as the inference side returned them (row i answers prompt i).</summary>
/// <param name="Prompts">prompt texts [B]</param>
/// <param name="PromptIds">their token ids [B][P_i]</param>
/// <param name="Results">the sampled responses (ids, finish reason, engine log-probs) [B]</param>
public sealed record RolloutBatch(string[] Prompts, int[][] PromptIds, RolloutResult[] Results);

/// <summary>
/// The rollout phase of an iteration: which training prompts iteration <c>it</c> takes (consecutive slices of a seeded
/// permutation per pass) and <see cref="PpoConfig.NSamplesPerPrompt"/> sampled responses per prompt (k consecutive rows,
/// each with its own seed) from the engine holding the weights of that iteration.
/// </summary>
public sealed class RolloutPhase
{
    readonly IRolloutService _engine;
    readonly PpoConfig _cfg;
    readonly IReadOnlyList<string> _prompts;
    readonly int[][] _promptIds;

    /// <summary>The phase over <paramref name="prompts"/> (tokenised once here).</summary>
    public RolloutPhase(IRolloutService engine, TextTokenizer tokenizer, IReadOnlyList<string> prompts, PpoConfig cfg)
    {
        _engine = engine;
        _cfg = cfg;
        _prompts = prompts;
        _promptIds = [.. prompts.Select(p => PromptFormat.PromptIds(tokenizer, p))];
    }

    /// <summary>Iteration <paramref name="it"/>'s rollouts, sampled from weights version <paramref name="it"/> (iterations done).</summary>
    public RolloutBatch Generate(int it)
    {
        int k = _cfg.NSamplesPerPrompt;
        int[] rows = [.. BatchRows(_prompts.Count, it, _cfg.RolloutBatch / k, _cfg.Seed).SelectMany(r => Enumerable.Repeat(r, k))];
        return Sample(_engine, (ulong)it, [.. rows.Select(i => _prompts[i])], [.. rows.Select(i => _promptIds[i])], SamplingSeed(_cfg.Seed, it), _cfg);
    }

    /// <summary><paramref name="count"/> rollouts of the weights the engine holds now, prompts taken in order (cycling).</summary>
    public RolloutBatch Cycle(int count, ulong seed)
    {
        int[] rows = [.. Enumerable.Range(0, count).Select(i => i % _prompts.Count)];
        return Sample(_engine, _engine.WeightsVersion, [.. rows.Select(i => _prompts[i])], [.. rows.Select(i => _promptIds[i])], seed, _cfg);
    }

    /// <summary>The <paramref name="perIteration"/> prompts of iteration <paramref name="it"/>: consecutive slices of a seeded permutation per pass over the prompts.</summary>
    public static int[] BatchRows(int promptCount, int it, int perIteration, long seed)
    {
        int perPass = Math.Max(1, promptCount / perIteration);
        int pass = it / perPass, within = it % perPass;
        int[] order = SplitMixRandom.Permutation(promptCount, seed * 31 + pass);
        return [.. Enumerable.Range(within * perIteration, perIteration).Select(i => order[i % promptCount])];
    }

    static ulong SamplingSeed(long seed, int it) => Rng.Mix((ulong)seed ^ Rng.Mix((ulong)it + 0x5EED));

    /// <summary>
    /// One response per prompt from <paramref name="engine"/>, which must hold weights <paramref name="version"/> (a service
    /// that holds another version fails the call rather than mixing versions); row i is seeded with mix(seed + i).
    /// </summary>
    public static RolloutBatch Sample(IRolloutService engine, ulong version, string[] prompts, int[][] ids, ulong seed, PpoConfig cfg)
    {
        var requests = ids.Select((p, i) => RolloutRequest.FromIds(p, new SamplingOptions
        {
            Temperature = (float)cfg.Temperature, TopK = cfg.TopK, TopP = (float)cfg.TopP, MaxNewTokens = cfg.MaxNewTokens,
            Seed = Rng.Mix(seed + (ulong)i),
        })).ToList();
        return new RolloutBatch(prompts, ids, [.. engine.Generate(requests, new RolloutCall { RequiredVersion = version })]);
    }
}
