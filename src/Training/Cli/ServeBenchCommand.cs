using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Rlhf.Export;
using Rlhf.Export.Hf;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Ppo;
using Rlhf.Training.Sft;
using Spectre.Console;
using static TorchSharp.torch;

namespace Rlhf.Training.Cli;

/// <summary>
/// <c>rlhf bench serve</c>: what the services cost against the in-process path, with real <c>rlhf serve</c> replicas on
/// 127.0.0.1: a weight push to 1 and 3 replicas (seconds, MB/s) vs the in-process sync, rollout tokens/s through one
/// replica vs the in-process engine at one batch, 1, 4 and 16 streaming clients at once vs one after another (tokens/s,
/// time to first token; the replica batches the calls that wait), and PPO seconds per iteration in process vs over replicas.
/// </summary>
internal static class ServeBenchCommand
{
    /// <summary>Settings of one run.</summary>
    internal sealed record Options
    {
        /// <summary>Model config file (config.json) of the default model.</summary>
        public required string ConfigPath { get; init; }
        /// <summary>Also the ~100M config (pushes and tokens/s; PPO runs on the default model only).</summary>
        public bool Large { get; init; }
        /// <summary>Rows per generate call.</summary>
        public int Batch { get; init; } = 32;
        /// <summary>Tokens generated per row.</summary>
        public int NewTokens { get; init; } = 32;
        /// <summary>Threads of the trainer and of every replica (0 = all cores).</summary>
        public int Threads { get; init; }
        /// <summary>Timed runs per figure; the fastest counts.</summary>
        public int Repeats { get; init; } = 2;
        /// <summary>PPO iterations per run (0 = skip PPO).</summary>
        public int PpoIterations { get; init; } = 3;
        /// <summary>Only the concurrency axis (continuous vs call-boundary batching): no push, tokens/s or PPO figures.</summary>
        public bool OnlyConcurrency { get; init; }
        /// <summary>Also push a LoRA adapter of this rank (all linear projections) into the LoRA-input graph (0 = skip).</summary>
        public int LoraRank { get; init; } = 16;
    }

    /// <summary>The <c>serve</c> sub-command of <c>rlhf bench</c>.</summary>
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "Model config.json of the default model.", DefaultValueFactory = _ => "models/tiny/config.json" };
        var large = new Option<bool>("--large") { Description = "Also the ~100M-parameter random config (weight push and tokens/s; PPO stays on the default model)." };
        var batch = new Option<int>("--batch") { Description = "Rows per generate call (and PPO rollout batch).", DefaultValueFactory = _ => 32 };
        var newTokens = new Option<int>("--new-tokens") { Description = "Tokens generated per row.", DefaultValueFactory = _ => 32 };
        var threads = new Option<int>("--threads") { Description = "Threads of the trainer and of each replica (0 = all cores).", DefaultValueFactory = _ => 0 };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs per figure; the fastest counts (the machine may be shared).", DefaultValueFactory = _ => 2 };
        var iterations = new Option<int>("--ppo-iterations") { Description = "PPO iterations per run, in process and over replicas (0 = skip).", DefaultValueFactory = _ => 3 };
        var onlyConcurrency = new Option<bool>("--only-concurrency") { Description = "Only the streaming-clients axis, against a replica with continuous batching and one with call-boundary batching (no push, tokens/s or PPO)." };
        var loraRank = new Option<int>("--lora-rank") { Description = "Also push a LoRA adapter of this rank (all linear projections) into the base exported with LoRA inputs, in process and to replicas (0 = skip).", DefaultValueFactory = _ => 16 };
        var json = new Option<string?>("--json") { Description = "Also write the figures to this JSON file (push_seconds, push_mb_per_s, tokens_per_s, remote_over_inprocess_tokens_per_s, concurrent_over_sequential_tokens_per_s, concurrent_tokens_per_s, ttft_p50_seconds, ttft_p95_seconds (per model and client count; the same with a _call_boundary suffix for a replica run with --batching call), iteration_seconds_inprocess, iteration_seconds_remote, iteration_phase_seconds)." };
        var cmd = new Command("serve", "Services vs in process, with rlhf serve replicas on 127.0.0.1: weight push to 1 and 3 replicas vs the in-process sync, tokens/s through one replica vs the in-process engine, PPO seconds per iteration.")
            { config, large, batch, newTokens, threads, repeats, iterations, onlyConcurrency, loraRank, json };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            string path = r.GetValue(config)!;
            var options = new Options
            {
                ConfigPath = File.Exists(path) ? path : throw new FileNotFoundException($"Model config '{path}' not found; pass --config."),
                Large = r.GetValue(large), Batch = r.GetValue(batch), NewTokens = r.GetValue(newTokens), Threads = r.GetValue(threads),
                Repeats = Math.Max(1, r.GetValue(repeats)), PpoIterations = r.GetValue(onlyConcurrency) ? 0 : r.GetValue(iterations),
                OnlyConcurrency = r.GetValue(onlyConcurrency), LoraRank = r.GetValue(loraRank),
            };
            if (options.Batch < 1 || options.NewTokens < 1 || options.PpoIterations < 0 || options.LoraRank < 0)
                throw new ArgumentException("--batch and --new-tokens must be >= 1, --ppo-iterations and --lora-rank >= 0.");
            var figures = Run(options, AnsiConsole.Console);
            if (r.GetValue(json) is string file) AtomicFile.WriteAllText(file, figures.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
            return 0;
        }));
        return cmd;
    }

    /// <summary>Runs the benchmark, prints its tables to <paramref name="console"/> and returns the figures.</summary>
    internal static JsonObject Run(Options o, IAnsiConsole console)
    {
        int threads = o.Threads > 0 ? o.Threads : Environment.ProcessorCount;
        DeviceSelector.SetThreads(threads);
        var figures = new JsonObject
        {
            ["push_seconds"] = new JsonObject(), ["push_mb_per_s"] = new JsonObject(), ["tokens_per_s"] = new JsonObject(),
            ["remote_over_inprocess_tokens_per_s"] = new JsonObject(),
        };
        console.MarkupLine($"[bold]rlhf bench serve[/]: {threads} thread(s) for the trainer and for each replica, batch {o.Batch}, {o.NewTokens} new tokens per row (T=1), best of {o.Repeats}.");
        var push = new Table().Title("weight push (float32 snapshot + transfer + swap)").AddColumns("model", "MB", "in process s", "1 replica s", "MB/s", "3 replicas s", "MB/s");
        var tokens = new Table().Title($"rollout tokens/s at batch {o.Batch}").AddColumns("model", "in process", "1 replica", "remote / in process", "same tokens");
        var concurrency = new Table().Title($"streaming clients at once vs one after another ({o.NewTokens} tokens each)")
            .AddColumns("model", "batching", "clients", "at once tokens/s", "one by one tokens/s", "ratio", "TTFT p50 ms", "TTFT p95 ms");
        void Set(string family, string model, string clients, double value)
        {
            if (figures[family] is not JsonObject f) figures[family] = f = new JsonObject();
            if (f[model] is not JsonObject m) f[model] = m = new JsonObject();
            m[clients] = value;
        }
        var models = new List<(string Name, ModelConfig Cfg)> { ("tiny", ModelConfig.Load(o.ConfigPath)) };
        if (o.Large) models.Add(("100M", RolloutBenchCommand.Large));
        foreach (var (name, cfg) in models)
        {
            var (p, t) = Measure(name, cfg with { EosTokenIds = [] }, o, threads);
            double mb = p.Bytes / 1e6;
            if (!o.OnlyConcurrency)
            {
                push.AddRow(name, F(mb, 1), F(p.InProcess, 3), F(p.One, 3), F(mb / p.One, 0), F(p.Three, 3), F(mb / p.Three, 0));
                tokens.AddRow(name, F(t.InProcess, 0), F(t.Remote, 0), F(t.Remote / t.InProcess, 3) + "x", t.Same ? "yes" : "NO");
                figures["push_seconds"]![name] = new JsonObject { ["inprocess"] = p.InProcess, ["replicas_1"] = p.One, ["replicas_3"] = p.Three };
                figures["push_mb_per_s"]![name] = new JsonObject { ["replicas_1"] = mb / p.One, ["replicas_3"] = mb / p.Three };
                if (o.LoraRank > 0)
                {
                    var a = MeasureAdapterPush(name, cfg with { EosTokenIds = [] }, o, threads);
                    string row = $"{name} LoRA r={o.LoraRank}", key = $"{name}_lora_r{o.LoraRank}";
                    double amb = a.Bytes / 1e6;
                    push.AddRow(row, F(amb, 2), F(a.InProcess, 4), F(a.One, 4), F(amb / a.One, 0), F(a.Three, 4), F(amb / a.Three, 0));
                    figures["push_seconds"]![key] = new JsonObject { ["inprocess"] = a.InProcess, ["replicas_1"] = a.One, ["replicas_3"] = a.Three };
                    figures["push_mb_per_s"]![key] = new JsonObject { ["replicas_1"] = amb / a.One, ["replicas_3"] = amb / a.Three };
                    figures["push_bytes"] ??= new JsonObject();
                    figures["push_bytes"]![name] = p.Bytes;
                    figures["push_bytes"]![key] = a.Bytes;
                }
                figures["tokens_per_s"]![name] = new JsonObject { ["inprocess"] = t.InProcess, ["remote"] = t.Remote, ["same_tokens"] = t.Same };
                figures["remote_over_inprocess_tokens_per_s"]![name] = t.Remote / t.InProcess;
            }
            foreach (var (mode, suffix, list) in new[] { ("continuous", "", t.Concurrency), ("call boundary", "_call_boundary", t.CallBoundary) })
                foreach (var c in list)
                {
                    string key = c.Clients.ToString(CultureInfo.InvariantCulture);
                    concurrency.AddRow(name, mode, key, F(c.ConcurrentTokensPerSecond, 0), F(c.SequentialTokensPerSecond, 0), F(c.Ratio, 2) + "x", F(c.TtftP50 * 1000, 0), F(c.TtftP95 * 1000, 0));
                    Set("concurrent_over_sequential_tokens_per_s" + suffix, name, key, c.Ratio);
                    Set("concurrent_tokens_per_s" + suffix, name, key, c.ConcurrentTokensPerSecond);
                    Set("ttft_p50_seconds" + suffix, name, key, c.TtftP50);
                    Set("ttft_p95_seconds" + suffix, name, key, c.TtftP95);
                }
        }
        if (!o.OnlyConcurrency)
        {
            console.Write(push);
            console.Write(tokens);
        }
        console.Write(concurrency);
        if (o.PpoIterations > 0)
        {
            var (local, remote) = Ppo(o, threads);
            double localTotal = local.Values.Sum(), remoteTotal = remote.Values.Sum();
            figures["iteration_seconds_inprocess"] = localTotal;
            figures["iteration_seconds_remote"] = remoteTotal;
            figures["iteration_phase_seconds"] = new JsonObject
            {
                ["inprocess"] = new JsonObject([.. local.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))]),
                ["remote"] = new JsonObject([.. remote.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))]),
            };
            var table = new Table().Title($"PPO seconds per iteration (tiny, {o.PpoIterations} iterations of {o.Batch} rollouts; remote: 3 rollout replicas + a reward replica)")
                .AddColumns("", "in process", "over replicas", "remote / in process");
            foreach (string phase in local.Keys) table.AddRow(phase, F(local[phase], 3), F(remote[phase], 3), F(remote[phase] / local[phase], 2) + "x");
            console.Write(table.AddRow("iteration", F(localTotal, 3), F(remoteTotal, 3), F(remoteTotal / localTotal, 2) + "x"));
        }
        return figures;
    }

    static string F(double x, int digits) => x.ToString("F" + digits.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);

    sealed record PushFigures(long Bytes, double InProcess, double One, double Three);
    sealed record TokenFigures(double InProcess, double Remote, bool Same, IReadOnlyList<ConcurrencyFigures> Concurrency, IReadOnlyList<ConcurrencyFigures> CallBoundary);

    /// <summary>
    /// <paramref name="Clients"/> streaming clients at once (one request of one sequence each) against the same requests
    /// one after another: total generated tokens/s of each, and the time to first token (first server-sent event) of the
    /// concurrent ones.
    /// </summary>
    sealed record ConcurrencyFigures(int Clients, double ConcurrentTokensPerSecond, double SequentialTokensPerSecond, double TtftP50, double TtftP95)
    {
        public double Ratio => ConcurrentTokensPerSecond / SequentialTokensPerSecond;
    }

    static readonly int[] ClientCounts = [1, 4, 16];

    /// <summary>One streamed completion of <paramref name="ids"/>: seconds to its first event and tokens generated (events with a token).</summary>
    static async Task<(double Ttft, int Tokens)> Stream(HttpClient http, string model, IReadOnlyList<int> ids, int newTokens, ulong seed)
    {
        var body = new JsonObject { ["model"] = model, ["prompt"] = new JsonArray([.. ids.Select(i => (JsonNode)i)]), ["max_tokens"] = newTokens, ["seed"] = seed, ["stream"] = true };
        var sw = Stopwatch.StartNew();
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body.ToJsonString(), System.Text.Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        response.EnsureSuccessStatusCode();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        double ttft = double.NaN;
        int tokens = 0;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
            if (double.IsNaN(ttft)) ttft = sw.Elapsed.TotalSeconds;
            if (line.Contains("\"token_ids\"", StringComparison.Ordinal)) tokens++;
        }
        return (ttft, tokens);
    }

    /// <summary>The concurrency axis against the replica at <paramref name="address"/> (best of <paramref name="repeats"/> per figure).</summary>
    static List<ConcurrencyFigures> Concurrency(string address, string model, IReadOnlyList<RolloutRequest> requests, int newTokens, int repeats)
    {
        using var http = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromMinutes(10) };
        var figures = new List<ConcurrencyFigures>();
        Stream(http, model, requests[0].PromptIds!, 2, 0).GetAwaiter().GetResult();   // warm-up
        foreach (int clients in ClientCounts)
        {
            double concurrent = 0, sequential = 0;
            double[] ttfts = [];
            for (int k = 0; k < repeats; k++)
            {
                var sw = Stopwatch.StartNew();
                var all = Task.WhenAll(Enumerable.Range(0, clients).Select(i => Stream(http, model, requests[i % requests.Count].PromptIds!, newTokens, (ulong)i))).GetAwaiter().GetResult();
                double tps = all.Sum(a => a.Tokens) / sw.Elapsed.TotalSeconds;
                if (tps > concurrent) { concurrent = tps; ttfts = [.. all.Select(a => a.Ttft).Order()]; }
                sw.Restart();
                int tokens = 0;
                for (int i = 0; i < clients; i++) tokens += Stream(http, model, requests[i % requests.Count].PromptIds!, newTokens, (ulong)i).GetAwaiter().GetResult().Tokens;
                sequential = Math.Max(sequential, tokens / sw.Elapsed.TotalSeconds);
            }
            double Percentile(double q) => ttfts[Math.Min(ttfts.Length - 1, (int)Math.Ceiling(q * ttfts.Length) - 1)];
            figures.Add(new ConcurrencyFigures(clients, concurrent, sequential, Percentile(0.5), Percentile(0.95)));
        }
        return figures;
    }

    /// <summary>
    /// Adapter pushes of a random model with rank-<see cref="Options.LoraRank"/> adapters on every projection: the base
    /// exported once with LoRA inputs, then the adapter alone synced in process and to 1 and 3 replicas serving that export.
    /// </summary>
    static PushFigures MeasureAdapterPush(string name, ModelConfig cfg, Options o, int threads)
    {
        string dir = Directory.CreateTempSubdirectory("rlhf-bench-serve-lora-").FullName;
        try
        {
            using var model = LlamaForCausalLM.Create(cfg, CPU, ScalarType.Float32, 1234);
            model.eval();
            model.AttachLora(new LoraSettings(o.LoraRank, 2 * o.LoraRank, 0, LoraSettings.AllLinear), 1, null);
            string folder = Path.Combine(dir, name);
            LoraAdapterExport.Export(model, folder, new ExportOptions { Overwrite = true }, parity: false);
            var version = new Versions();
            using var engine = RolloutEngine.Load(folder, new RolloutEngineOptions { Threads = threads, EosTokenIds = [], PadTokenId = 0 });
            var (inProcess, bytes) = InProcessPush(engine, model, o.Repeats, version);
            string[] command = ["dotnet", Path.Combine(AppContext.BaseDirectory, "rlhf.dll"), "serve", "rollout", "--model", folder,
                "--threads", threads.ToString(CultureInfo.InvariantCulture)];
            var replicas = new List<ReplicaProcess>();
            try
            {
                for (int i = 0; i < 3; i++) replicas.Add(ReplicaProcess.Start(command));
                using var one = Pool(replicas.Take(1), o);
                using var three = Pool(replicas, o);
                var (pushOne, pushThree) = ReplicaPushes(one, three, model, o.Repeats, version);
                return new PushFigures(bytes, inProcess, pushOne, pushThree);
            }
            finally
            {
                foreach (var r in replicas) r.Dispose();
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Weight pushes and tokens/s of one random model: in process, then through replicas serving its export.</summary>
    static (PushFigures, TokenFigures) Measure(string name, ModelConfig cfg, Options o, int threads)
    {
        string dir = Directory.CreateTempSubdirectory("rlhf-bench-serve-").FullName;
        try
        {
            using var model = LlamaForCausalLM.Create(cfg, CPU, ScalarType.Float32, 1234);
            model.eval();
            string folder = Path.Combine(dir, name);
            ExportStage.ExportPolicy(model, folder, ExportStage.DefaultGraph(cfg), new ExportOptions { Overwrite = true }, parity: false);
            var rng = new Random(7);
            var requests = Enumerable.Range(0, o.Batch).Select(i => RolloutRequest.FromIds(
                [.. Enumerable.Range(0, rng.Next(8, 17)).Select(_ => rng.Next(3, cfg.VocabSize))],
                new SamplingOptions { Temperature = 1f, MaxNewTokens = o.NewTokens, Seed = (ulong)i })).ToList();
            var version = new Versions();

            string[] command = ["dotnet", Path.Combine(AppContext.BaseDirectory, "rlhf.dll"), "serve", "rollout", "--model", folder,
                "--threads", threads.ToString(CultureInfo.InvariantCulture), "--max-batch", Math.Max(256, o.Batch).ToString(CultureInfo.InvariantCulture)];
            List<ConcurrencyFigures> CallBoundary()
            {
                using var call = ReplicaProcess.Start([.. command, "--batching", "call"]);
                return Concurrency(call.Address, name, requests, o.NewTokens, o.Repeats);
            }
            if (o.OnlyConcurrency)
            {
                List<ConcurrencyFigures> continuous;
                using (var replica = ReplicaProcess.Start(command)) continuous = Concurrency(replica.Address, name, requests, o.NewTokens, o.Repeats);
                return (new PushFigures(0, double.NaN, double.NaN, double.NaN), new TokenFigures(double.NaN, double.NaN, true, continuous, CallBoundary()));
            }
            using var engine = RolloutEngine.Load(folder, new RolloutEngineOptions { Threads = threads, EosTokenIds = [], PadTokenId = 0, MaxBatchSize = Math.Max(64, o.Batch) });
            var (inProcess, bytes) = InProcessPush(engine, model, o.Repeats, version);
            var (localTps, localTokens) = TokensPerSecond(engine, requests, version.Last, o.Repeats);
            var replicas = new List<ReplicaProcess>();
            try
            {
                for (int i = 0; i < 3; i++) replicas.Add(ReplicaProcess.Start(command));
                using var one = Pool(replicas.Take(1), o);
                using var three = Pool(replicas, o);
                var (pushOne, pushThree) = ReplicaPushes(one, three, model, o.Repeats, version);
                var (remoteTps, remoteTokens) = TokensPerSecond(one, requests, version.Last, o.Repeats);
                bool same = localTokens.Zip(remoteTokens).All(x => x.First.AsSpan().SequenceEqual(x.Second));
                var concurrency = Concurrency(replicas[0].Address, name, requests, o.NewTokens, o.Repeats);
                foreach (var r in replicas) r.Dispose();   // the call-boundary replica runs alone
                return (new PushFigures(bytes, inProcess, pushOne, pushThree), new TokenFigures(localTps, remoteTps, same, concurrency, CallBoundary()));
            }
            finally
            {
                foreach (var r in replicas) r.Dispose();
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    static double Best(int repeats, Func<TimeSpan> run) => Enumerable.Range(0, repeats).Min(_ => run().TotalSeconds);

    /// <summary>The weights versions a measurement pushes, one after another.</summary>
    sealed class Versions
    {
        public ulong Last { get; private set; }
        public ulong Next() => ++Last;
    }

    /// <summary>The in-process sync of <paramref name="model"/> into <paramref name="engine"/> (best of <paramref name="repeats"/>, the engine's swap) and the bytes a push carries.</summary>
    static (double Seconds, long Bytes) InProcessPush(RolloutEngine engine, LlamaForCausalLM model, int repeats, Versions version)
    {
        double seconds = Best(repeats, () => InferenceServices.Sync(engine, model, version.Next()));
        using var message = InferenceServices.Snapshot(engine, model, 0);
        return (seconds, message.TotalBytes);
    }

    /// <summary>A pool over <paramref name="replicas"/> with the bench's shard size and a 10-minute deadline.</summary>
    static ReplicaPool Pool(IEnumerable<ReplicaProcess> replicas, Options o) =>
        new([.. replicas.Select(r => r.Address)], null, o.Batch, TimeSpan.FromMinutes(10), TextWriter.Null);

    /// <summary>Pushes of <paramref name="model"/> to one replica and to three (best of <paramref name="repeats"/> each).</summary>
    static (double One, double Three) ReplicaPushes(ReplicaPool one, ReplicaPool three, LlamaForCausalLM model, int repeats, Versions version) =>
        (Best(repeats, () => InferenceServices.Sync(one, model, version.Next())), Best(repeats, () => InferenceServices.Sync(three, model, version.Next())));

    /// <summary>Generated tokens per second (best of <paramref name="repeats"/> after a short warm-up) and the tokens of the last run.</summary>
    static (double TokensPerSecond, int[][] Tokens) TokensPerSecond(IRolloutService service, IReadOnlyList<RolloutRequest> requests, ulong version, int repeats)
    {
        var call = new RolloutCall { RequiredVersion = version };
        service.Generate([.. requests.Take(4).Select(q => q with { Sampling = q.Sampling! with { MaxNewTokens = 2 } })], call);
        double best = 0;
        int[][] tokens = [];
        for (int k = 0; k < repeats; k++)
        {
            var sw = Stopwatch.StartNew();
            var results = service.Generate(requests, call);
            best = Math.Max(best, results.Sum(r => r.ResponseIds.Length) / sw.Elapsed.TotalSeconds);
            tokens = [.. results.Select(r => r.ResponseIds)];
        }
        return (best, tokens);
    }

    /// <summary>
    /// Mean seconds per PPO iteration of each <c>time/*</c> phase in process and over 3 rollout replicas + a
    /// reward replica, on a fresh model of the default config with a tokenizer trained on the default task and a reward
    /// model with a fresh head (what is timed does not depend on the weights).
    /// </summary>
    static (SortedDictionary<string, double> InProcess, SortedDictionary<string, double> Remote) Ppo(Options o, int threads)
    {
        string dir = Directory.CreateTempSubdirectory("rlhf-bench-serve-ppo-").FullName;
        try
        {
            string sft = Path.Combine(dir, "sft"), rm = Path.Combine(dir, "rm");
            var texts = DataSets.SftExamples(7, DataSets.SftTrainName, 2000).Select(e => PromptFormat.Join(e.Prompt, e.Response));
            SftTrainer.WriteFreshModel(sft, texts, vocabSize: 2000, Path.GetFullPath(o.ConfigPath), seed: 1);
            using (var policy = LlamaForCausalLM.FromPretrained(sft, CPU, ScalarType.Float32)) ExportStage.AfterStage(policy, sft, "sft");
            using (var reward = LlamaForSequenceClassification.FromPretrained(sft, CPU, ScalarType.Float32, newHeadSeed: 3))
            {
                reward.SavePretrained(rm, ScalarType.Float32);
                TokenizerFiles.Copy(sft, rm);
                ExportStage.AfterStage(reward, rm, "rm");
            }
            int shard = (o.Batch + 2) / 3;
            var local = new PpoConfig
            {
                Out = Path.Combine(dir, "ppo-local"), SftModel = sft, RmModel = rm, RewardNormalization = ScoreNormalization.None,
                Iterations = o.PpoIterations, RolloutBatch = o.Batch, MiniBatch = Math.Min(8, o.Batch), PpoEpochs = 1, MaxNewTokens = o.NewTokens,
                DefaultPrompts = Math.Max(64, o.Batch), EvalPrompts = 4, EvalEvery = o.PpoIterations, CheckpointEvery = 0, BestOfN = [1],
                Threads = threads, RolloutShardSize = shard, Seed = 1,
            };
            if (o.Batch % local.MiniBatch != 0) local = local with { MiniBatch = o.Batch };
            var inProcess = PhaseSeconds(local);

            string threadArg = threads.ToString(CultureInfo.InvariantCulture), rlhf = Path.Combine(AppContext.BaseDirectory, "rlhf.dll");
            var replicas = new List<ReplicaProcess>();
            try
            {
                for (int i = 0; i < 3; i++) replicas.Add(ReplicaProcess.Start(["dotnet", rlhf, "serve", "rollout", "--model", Path.Combine(sft, ExportStage.OnnxFolderName), "--threads", threadArg]));
                var reward = ReplicaProcess.Start(["dotnet", rlhf, "serve", "reward", "--reward-model", Path.Combine(rm, ExportStage.OnnxFolderName), "--threads", threadArg]);
                replicas.Add(reward);
                var remote = PhaseSeconds(local with
                {
                    Out = Path.Combine(dir, "ppo-remote"), RolloutEndpoints = [.. replicas.Take(3).Select(r => r.Address)], RewardEndpoint = reward.Address,
                });
                return (inProcess, remote);
            }
            finally
            {
                foreach (var r in replicas) r.Dispose();
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Mean seconds per iteration of each <c>time/*</c> phase (generate, score, experience, train, sync) of a PPO run.</summary>
    static SortedDictionary<string, double> PhaseSeconds(PpoConfig cfg)
    {
        PpoTrainer.Train(cfg, new RunControl { Progress = false });
        var rows = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv")).Rows;
        return new SortedDictionary<string, double>(rows[0].Keys.Where(k => k.StartsWith("time/", StringComparison.Ordinal))
            .ToDictionary(k => k["time/".Length..], k => rows.Average(r => r[k])), StringComparer.Ordinal);
    }
}
