using Rlhf.Export.Onnx;
using Rlhf.Inference.Rollout;
using Rlhf.Export.Hf;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>
/// <see cref="RolloutEngine.RunContinuous"/> on both graphs: calls that join a running batch at chosen decode steps
/// (prompts and lengths all different, sampled with seeds, greedy, top-k, top logprobs) get exactly the tokens they get
/// alone; a short call that joins a long one ends first; a cancelled call frees its slot for a waiting one.
/// </summary>
public sealed class ContinuousBatchingTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"rlhf-cbatch-{Guid.NewGuid():N}");

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    static ModelConfig Config(int vocab) =>
        TinyModels.Config() with { VocabSize = vocab, HiddenSize = 64, NumAttentionHeads = 4, NumKeyValueHeads = 2, IntermediateSize = 96 };   // head_dim 16 (GQA)

    RolloutEngine Engine(string graph, int[] eos)
    {
        using var m = TinyModels.Randomized(Config(50), 13);
        string dir = Path.Combine(_dir, graph);
        if (!Directory.Exists(dir))
        {
            if (graph == "gqa") LlamaContribGraph.Export(m.Config, m.state_dict(), dir);
            else LlamaGraph.Export(m.Config, m.state_dict(), dir);
        }
        return RolloutEngine.Load(dir, new RolloutEngineOptions { Threads = 1, EosTokenIds = eos, PadTokenId = 0 });
    }

    /// <summary>What one call got: its rows' results, its tokens as streamed, or why it failed.</summary>
    sealed class Outcome(int rows)
    {
        public RolloutResult?[] Results { get; } = new RolloutResult?[rows];
        public List<(int Row, int Token)> Streamed { get; } = [];
        public Exception? Error { get; set; }
    }

    /// <summary>
    /// Runs <paramref name="calls"/> through the engine's continuous batch: call i is offered at the
    /// <paramref name="arrivals"/>[i]-th step boundary (in order, while it fits in the free rows). Returns the outcomes,
    /// the order in which calls ended, and how many calls joined a batch that was already decoding.
    /// </summary>
    static (Outcome[] Outcomes, List<int> Ended, int JoinedRunning) Run(RolloutEngine engine, RolloutRequest[][] calls, int[] arrivals, int maxRows,
        CancellationToken[]? cancels = null)
    {
        var outcomes = calls.Select(c => new Outcome(c.Length)).ToArray();
        var ended = new List<int>();
        int next = 0, boundary = 0, joinedRunning = 0;
        IReadOnlyList<BatchCall> Admit(int free)
        {
            var taken = new List<BatchCall>();
            while (next < calls.Length && arrivals[next] <= boundary && calls[next].Length <= free)
            {
                int c = next++;
                free -= calls[c].Length;
                if (free + calls[c].Length < maxRows) joinedRunning++;
                int left = calls[c].Length;
                taken.Add(new BatchCall(calls[c], null, cancels?[c] ?? default,
                    e => outcomes[c].Streamed.Add((e.Request, e.Token)),
                    (k, r) => { outcomes[c].Results[k] = r; if (--left == 0) ended.Add(c); },
                    e => { outcomes[c].Error = e; ended.Add(c); }));
            }
            boundary++;
            return taken;
        }
        for (int guard = 0; next < calls.Length || ended.Count < calls.Length; guard++)
        {
            Assert.True(guard < 1000, "the calls never all ended");
            engine.RunContinuous(Admit, maxRows);
            if (ended.Count < next) Assert.Fail("RunContinuous returned with calls still live");
            boundary++;   // an idle batch: time passes until the next call comes
        }
        return (outcomes, ended, joinedRunning);
    }

    static SamplingOptions Sampled(ulong seed, int maxNew, int topK = 0, int topLogProbs = 0, float temperature = 1f) =>
        new() { Temperature = temperature, TopK = topK, MaxNewTokens = maxNew, Seed = seed, TopLogProbs = topLogProbs };

    [Theory]
    [InlineData("plain")]
    [InlineData("gqa")]
    public void CallsJoiningAtAnyStepGetTheirSoloTokens(string graph)
    {
        using var engine = Engine(graph, eos: [2]);
        var rng = new Random(5);
        int[] Prompt(int len) => [1, .. Enumerable.Range(0, len - 1).Select(_ => rng.Next(3, 50))];
        RolloutRequest[][] calls =
        [
            [RolloutRequest.FromIds(Prompt(5), Sampled(1, 30))],
            [RolloutRequest.FromIds(Prompt(2), Sampled(2, 4, topK: 5))],
            [RolloutRequest.FromIds(Prompt(11), Sampled(3, 12, temperature: 0)), RolloutRequest.FromIds(Prompt(3), Sampled(4, 9, topLogProbs: 3))],
            [RolloutRequest.FromIds(Prompt(7), Sampled(5, 20, topLogProbs: 2))],
            [RolloutRequest.FromIds(Prompt(1), Sampled(6, 6))],
            [RolloutRequest.FromIds(Prompt(9), Sampled(7, 25, temperature: 0.7f))],
            [RolloutRequest.FromIds(Prompt(4), Sampled(8, 1))],
            [RolloutRequest.FromIds(Prompt(13), Sampled(9, 16, topK: 10))],
        ];
        int[] arrivals = [0, 0, 1, 3, 4, 4, 9, 15];
        var (outcomes, _, joinedRunning) = Run(engine, calls, arrivals, maxRows: 4);
        Assert.True(joinedRunning >= 3, $"only {joinedRunning} calls joined a running batch");
        for (int c = 0; c < calls.Length; c++)
        {
            Assert.Null(outcomes[c].Error);
            for (int k = 0; k < calls[c].Length; k++)
            {
                var alone = engine.Generate(calls[c][k]);
                var got = outcomes[c].Results[k]!;
                Assert.Equal(alone.ResponseIds, got.ResponseIds);
                Assert.Equal(alone.FinishReason, got.FinishReason);
                Assert.Equal(alone.PromptIds, got.PromptIds);
                for (int t = 0; t < alone.LogProbs.Length; t++) Assert.True(Math.Abs(alone.LogProbs[t] - got.LogProbs[t]) < 1e-4, $"logprob {t}: {alone.LogProbs[t]} alone, {got.LogProbs[t]} batched");
                Assert.Equal(alone.TopLogProbs?.Select(s => s.Select(x => x.Token).ToArray()), got.TopLogProbs?.Select(s => s.Select(x => x.Token).ToArray()));
                Assert.Equal(got.ResponseIds, outcomes[c].Streamed.Where(e => e.Row == k).Select(e => e.Token));   // streamed in order
            }
        }
    }

    [Theory]
    [InlineData("plain")]
    [InlineData("gqa")]
    public void AShortCallThatJoinsALongOneEndsFirst(string graph)
    {
        using var engine = Engine(graph, eos: []);
        RolloutRequest[][] calls = [[RolloutRequest.FromIds([1, 7, 9], Sampled(1, 40))], [RolloutRequest.FromIds([1, 4], Sampled(2, 3))]];
        var (outcomes, ended, _) = Run(engine, calls, [0, 2], maxRows: 8);
        Assert.Equal([1, 0], ended);
        Assert.Equal(40, outcomes[0].Results[0]!.ResponseIds.Length);
        Assert.Equal(engine.Generate(calls[1][0]).ResponseIds, outcomes[1].Results[0]!.ResponseIds);
    }

    [Theory]
    [InlineData("plain")]
    [InlineData("gqa")]
    public void ACancelledCallFreesItsSlotForAWaitingOne(string graph)
    {
        using var engine = Engine(graph, eos: []);
        using var cancel = new CancellationTokenSource();
        RolloutRequest[][] calls = [[RolloutRequest.FromIds([1, 7, 9], Sampled(1, 40))], [RolloutRequest.FromIds([1, 4], Sampled(2, 5))]];
        var outcomes = new Outcome[2];
        int streamed = 0;
        // one slot: the second call waits until the first leaves; the first is cancelled at its third token
        var first = new BatchCall(calls[0], null, cancel.Token, _ => { if (++streamed == 3) cancel.Cancel(); }, (_, _) => Assert.Fail("the cancelled call ended"),
            e => outcomes[0] = new Outcome(1) { Error = e });
        RolloutResult? second = null;
        var queue = new Queue<BatchCall>([first, new BatchCall(calls[1], null, default, null, (_, r) => second = r, e => Assert.Fail(e.Message))]);
        engine.RunContinuous(free => queue.Count > 0 ? [queue.Dequeue()] : [], maxRows: 1);
        Assert.IsAssignableFrom<OperationCanceledException>(outcomes[0].Error);
        Assert.Equal(3, streamed);
        Assert.Equal(engine.Generate(calls[1][0]).ResponseIds, second!.ResponseIds);
    }
}
