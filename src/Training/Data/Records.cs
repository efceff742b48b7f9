using Rlhf.Inference.Tokenization;
namespace Rlhf.Training.Data;

/// <summary>One supervised fine-tuning demonstration: the model sees <see cref="Prompt"/> and learns to
/// produce <see cref="Response"/>. The full text is <see cref="PromptFormat.Join"/>(Prompt, Response).</summary>
public sealed record SftExample(string Prompt, string Response);

/// <summary>One human (or simulated) preference: for <see cref="Prompt"/>, <see cref="Chosen"/> was ranked above
/// <see cref="Rejected"/>. The reward model loss is −log σ(r(x, y_chosen) − r(x, y_rejected)).</summary>
public sealed record PreferencePair(string Prompt, string Chosen, string Rejected);

/// <summary>A prompt for reward-model sampling or PPO rollouts.</summary>
public sealed record PromptExample(string Prompt);

/// <summary>A pretraining document (PPO-ptx): plain text, trained on in full.</summary>
public sealed record TextExample(string Text);

/// <summary>K responses to one prompt with their ranking, as InstructGPT labellers produced them.
/// <c>Ranking[i]</c> is the rank of <c>Responses[i]</c>: 0 is the best, K−1 the worst; the ranking must be a
/// permutation of 0..K−1 (no ties). Expand to all C(K, 2) pairs with <see cref="ToPairs"/>.</summary>
public sealed record RankedExample
{
    public RankedExample(string prompt, IReadOnlyList<string> responses, IReadOnlyList<int> ranking)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(responses);
        ArgumentNullException.ThrowIfNull(ranking);
        string? error = Validate(responses, ranking);
        if (error is not null) throw new ArgumentException(error, nameof(ranking));
        Prompt = prompt;
        Responses = responses.ToArray();
        Ranking = ranking.ToArray();
    }

    public string Prompt { get; }

    /// <summary>The K responses, K ≥ 2.</summary>
    public IReadOnlyList<string> Responses { get; }

    /// <summary>Ranking[i] = rank of Responses[i], 0 = best.</summary>
    public IReadOnlyList<int> Ranking { get; }

    public int K => Responses.Count;

    /// <summary>Why (responses, ranking) is not a valid ranked example, or null when it is.</summary>
    public static string? Validate(IReadOnlyList<string> responses, IReadOnlyList<int> ranking)
    {
        if (responses.Count < 2)
            return $"a ranked example needs at least 2 responses, got {responses.Count}";
        if (ranking.Count != responses.Count)
            return $"ranking has {ranking.Count} entries but there are {responses.Count} responses; give one rank per response";
        var seen = new bool[ranking.Count];
        foreach (int r in ranking)
        {
            if (r < 0 || r >= ranking.Count || seen[r])
                return $"ranking [{string.Join(", ", ranking)}] is not a permutation of 0..{ranking.Count - 1} "
                    + "(rank 0 = best, each rank used once)";
            seen[r] = true;
        }
        return null;
    }

    /// <summary>All C(K, 2) preference pairs of this prompt, better response as Chosen. Ordered by the rank of the
    /// chosen response, then of the rejected one, so the result does not depend on the order of Responses.</summary>
    public IReadOnlyList<PreferencePair> ToPairs()
    {
        int k = K;
        var byRank = new string[k];
        for (int i = 0; i < k; i++) byRank[Ranking[i]] = Responses[i];
        var pairs = new List<PreferencePair>(k * (k - 1) / 2);
        for (int w = 0; w < k; w++)
            for (int l = w + 1; l < k; l++)
                pairs.Add(new PreferencePair(Prompt, byRank[w], byRank[l]));
        return pairs;
    }

    /// <summary>Responses sorted best first.</summary>
    public IReadOnlyList<string> ResponsesBestFirst()
    {
        var byRank = new string[K];
        for (int i = 0; i < K; i++) byRank[Ranking[i]] = Responses[i];
        return byRank;
    }

    public bool Equals(RankedExample? other) =>
        other is not null && Prompt == other.Prompt
        && Responses.SequenceEqual(other.Responses) && Ranking.SequenceEqual(other.Ranking);

    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(Prompt);
        foreach (string r in Responses) h.Add(r);
        foreach (int r in Ranking) h.Add(r);
        return h.ToHashCode();
    }
}
