using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Serving;

/// <summary>What a rollout replica serves: one engine, its tokenizer and chat template, its name, and the count of calls in flight.</summary>
public sealed class RolloutReplica(IRolloutService engine, TextTokenizer? tokenizer, string modelName, string engineName, int maxBatch,
    ChatTemplate? chat = null, string? chatProblem = null) : IDisposable
{
    int _queued;

    /// <summary>The engine.</summary>
    public IRolloutService Engine => engine;
    /// <summary>The tokenizer (null: token ids only).</summary>
    public TextTokenizer? Tokenizer => tokenizer;
    /// <summary>The folder's chat template (null: none, or one outside the supported subset, see <see cref="ChatProblem"/>).</summary>
    public ChatTemplate? Chat => chat;
    /// <summary>Why the folder's chat template cannot be used (null: fine or absent).</summary>
    public string? ChatProblem => chatProblem;
    /// <summary>The model id clients name (<c>GET /v1/models</c>).</summary>
    public string ModelName => modelName;
    /// <summary><c>ort</c> or <c>genai</c>.</summary>
    public string EngineName => engineName;
    /// <summary>Most sequences per request.</summary>
    public int MaxBatch => maxBatch;
    /// <summary>Generate calls waiting or running.</summary>
    public int Queued => Volatile.Read(ref _queued);

    /// <summary>Generates, counting the call as queued while it waits and runs.</summary>
    public async Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall call, CancellationToken cancellationToken)
    {
        if (requests.Count == 0) throw new ArgumentException("The request holds no prompts.");
        if (requests.Count > maxBatch)
            throw new ArgumentException($"The request asks for {requests.Count} sequences; this replica takes at most {maxBatch} per request (--max-batch). Split it.");
        Interlocked.Increment(ref _queued);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            var results = await engine.GenerateAsync(requests, call, cancellationToken);
            ServeMetrics.Generated(results, clock.Elapsed);
            return results;
        }
        finally { Interlocked.Decrement(ref _queued); }
    }

    /// <summary>Frees the engine.</summary>
    public void Dispose() => engine.Dispose();
}

/// <summary>What a reward replica serves.</summary>
public sealed class RewardReplica(IRewardService scorer, string modelName, int maxBatch) : IDisposable
{
    readonly SemaphoreSlim _gate = new(1, 1);

    /// <summary>The model id.</summary>
    public string ModelName => modelName;

    /// <summary>Scores (prompt, response) pairs, one call at a time.</summary>
    public async Task<float[]> ScoreAsync(IReadOnlyList<RewardRequest> requests, CancellationToken cancellationToken)
    {
        if (requests.Count == 0) throw new ArgumentException("The request holds no texts to score.");
        if (requests.Count > maxBatch)
            throw new ArgumentException($"The request holds {requests.Count} texts; this replica takes at most {maxBatch} per request (--max-batch). Split it.");
        await _gate.WaitAsync(cancellationToken);
        try
        {
            var scores = await Task.Run(() => scorer.Score(requests), cancellationToken);
            ServeMetrics.ScoredTexts(scores.Length);
            return scores;
        }
        finally { _gate.Release(); }
    }

    /// <summary>Frees the model.</summary>
    public void Dispose() => scorer.Dispose();
}
