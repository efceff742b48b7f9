using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Grpc.Core;
using Grpc.Net.Client;
using Rlhf.Training.Common;
using Rlhf.Training.Service;
using Rlhf.Training.Sft;
using Rlhf.Training.Tests.Sft;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// <c>rlhf serve train</c> as a real process on 127.0.0.1, driven the way a curl user drives it: plain HttpClient and
/// JSON, every call with a deadline, the process stopped (or killed) by the test.
/// </summary>
public sealed class TrainServeTests
{
    const string Token = "train-token-123";
    static readonly TimeSpan RunDeadline = TimeSpan.FromSeconds(240);

    sealed class Server : IDisposable
    {
        public required Rlhf.Inference.Serving.ReplicaProcess Process { get; init; }
        public required HttpClient Http { get; init; }
        public void Dispose()
        {
            Http.Dispose();
            Process.Dispose();
        }
    }

    /// <summary>Starts <c>rlhf serve train</c> on <paramref name="runsDir"/> with the token (and <paramref name="extra"/> options).</summary>
    static Server Start(string runsDir, params string[] extra)
    {
        string tokenFile = Path.Combine(Directory.CreateTempSubdirectory().FullName, "token.txt");
        File.WriteAllText(tokenFile, Token + "\n");
        var p = ServerProcess.StartDll(ServerProcess.RlhfDll, 0, ["serve", "train", "--runs-dir", runsDir, "--token-file", tokenFile, .. extra]);
        var http = new HttpClient { BaseAddress = new Uri(p.Address), Timeout = TimeSpan.FromSeconds(30) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Token);
        return new Server { Process = p, Http = http };
    }

    /// <summary>The tiny SFT of <see cref="SftTrainerTests.Tiny"/> as request JSON (4 steps, 2 checkpoints).</summary>
    static JsonObject TinySft(string modelConfig) => new()
    {
        ["model_config"] = modelConfig, ["tokenizer_vocab_size"] = 300, ["default_train_size"] = 64, ["default_eval_size"] = 8,
        ["batch_size"] = 8, ["grad_accum"] = 2, ["max_seq_len"] = 48, ["lr"] = 3e-3, ["warmup_steps"] = 1, ["eval_every"] = 2,
        ["checkpoint_every"] = 2, ["sample_count"] = 4, ["threads"] = 1, ["seed"] = 3,
    };

    /// <summary>
    /// A tiny SFT that cannot end while a test waits on it: 10,000 epochs of 20 steps (a checkpoint every 4). Stopped
    /// only by the test (a cancel or a kill), so a stop request can never lose a race with the run's end.
    /// </summary>
    static JsonObject EndlessSft(string modelConfig) => new()
    {
        ["model_config"] = modelConfig, ["tokenizer_vocab_size"] = 300, ["default_train_size"] = 160, ["default_eval_size"] = 8,
        ["batch_size"] = 8, ["grad_accum"] = 1, ["epochs"] = 10_000, ["max_seq_len"] = 48, ["lr"] = 3e-3, ["warmup_steps"] = 1,
        ["eval_every"] = 10, ["checkpoint_every"] = 4, ["sample_count"] = 0, ["threads"] = 1, ["seed"] = 5,
    };

    static readonly Lazy<string> EndlessArch = new(SftTrainerTests.TinyArchitecture);

    /// <summary>The checkpoint files that a run's checkpoint at a step must equal byte for byte (the weights and the AdamW state).</summary>
    static readonly string[] CheckpointFiles = ["checkpoint/model.safetensors", "checkpoint/optimizer.bin"];

    /// <summary>
    /// The endless SFT run in process without interruption, stopped after <paramref name="step"/>: the output folder whose
    /// checkpoint a stopped and resumed run's checkpoint at that step must equal.
    /// </summary>
    static string ReferenceStoppedAt(int step)
    {
        string outDir = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ref");
        var cfg = ConfigLoader.FromJson<SftConfig>(EndlessSft(EndlessArch.Value), "test") with { Out = outDir };
        Rlhf.Training.Tests.Common.StopAfter.Step(step, c => SftTrainer.Run(cfg, c));
        return outDir;
    }

    /// <summary>
    /// Asserts that run <paramref name="id"/> stopped at a step boundary: its status step equals its checkpoint's step, it
    /// has one metrics row per step up to there, and the checkpoint equals an uninterrupted run's at that step. Returns the step.
    /// </summary>
    static async Task<int> AssertStoppedExactly(HttpClient http, string id, int atLeast)
    {
        var s = await Status(http, id);
        int step = (int)s["step"]!;
        Assert.True(step >= atLeast, $"stopped at step {step}, before step {atLeast} that it had already reported");
        Assert.Equal(step, (int)JsonNode.Parse(await Artifact(http, id, "checkpoint/trainer_state.json"))!["step"]!);
        var rows = (await Json(await http.GetAsync($"/v1/runs/{id}/metrics")))["rows"]!.AsArray();
        Assert.Equal(Enumerable.Range(1, step), rows.Select(r => (int)r!["step"]!));   // a step redone after a restart replaces the first try's
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync($"/v1/runs/{id}/artifacts/model.safetensors")).StatusCode);   // not finished
        string reference = ReferenceStoppedAt(step);
        foreach (string f in CheckpointFiles)
        {
            byte[] served = await Artifact(http, id, f);
            Assert.True(File.ReadAllBytes(Path.Combine(reference, f)).SequenceEqual(served), $"{f} at step {step} differs from an uninterrupted run's");
        }
        return step;
    }

    /// <summary>Waits (bounded) until the server has logged that run <paramref name="id"/> resumed from the checkpoint of step <paramref name="step"/>, not from scratch.</summary>
    static void AssertResumedFrom(Server server, string id, int step)
    {
        string line = $"run {id}: Resuming from step {step} of ";
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!server.Process.Output.Contains(line, StringComparison.Ordinal))
        {
            Assert.True(DateTime.UtcNow < deadline, $"the server did not log '{line}…':\n{server.Process.Output}");
            Thread.Sleep(50);
        }
    }

    static async Task<JsonObject> Json(HttpResponseMessage r) => JsonNode.Parse(await r.Content.ReadAsStringAsync())!.AsObject();

    static async Task<string> Submit(HttpClient http, string stage, JsonObject config)
    {
        var r = await http.PostAsync("/v1/runs", Body(new JsonObject { ["stage"] = stage, ["config"] = config }));
        var body = await Json(r);
        Assert.True(r.StatusCode == HttpStatusCode.Created, body.ToJsonString());
        Assert.Equal("queued", (string)body["status"]!);
        return (string)body["id"]!;
    }

    static StringContent Body(JsonNode json) => new(json.ToJsonString(), Encoding.UTF8, "application/json");

    static async Task<JsonObject> Status(HttpClient http, string id) => await Json(await http.GetAsync($"/v1/runs/{id}"));

    /// <summary>Polls the run until its status is one of <paramref name="statuses"/>.</summary>
    static async Task<JsonObject> WaitFor(HttpClient http, string id, params string[] statuses)
    {
        var deadline = DateTime.UtcNow + RunDeadline;
        while (true)
        {
            var s = await Status(http, id);
            if (statuses.Contains((string)s["status"]!)) return s;
            Assert.True(DateTime.UtcNow < deadline, $"run {id} still {s["status"]} after {RunDeadline.TotalSeconds} s: {s.ToJsonString()}");
            await Task.Delay(100);
        }
    }

    /// <summary>Reads <c>GET /metrics?follow=true</c> (server-sent events) until <paramref name="until"/> holds for a row or the stream ends; returns the rows and the end status.</summary>
    static async Task<(List<JsonObject> Rows, string? End)> Follow(HttpClient http, string id, Func<JsonObject, bool>? until = null)
    {
        using var cts = new CancellationTokenSource(RunDeadline);
        using var r = await http.GetAsync($"/v1/runs/{id}/metrics?follow=true", HttpCompletionOption.ResponseHeadersRead, cts.Token);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("text/event-stream", r.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync(cts.Token));
        var rows = new List<JsonObject>();
        string? ev = null;
        while (await reader.ReadLineAsync(cts.Token) is string line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal)) ev = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                var o = JsonNode.Parse(line[6..])!.AsObject();
                if (ev == "end") return (rows, (string)o["status"]!);
                rows.Add(o);
                if (until?.Invoke(o) == true) return (rows, null);
            }
        }
        return (rows, null);
    }

    static async Task<byte[]> Artifact(HttpClient http, string id, string path)
    {
        var r = await http.GetAsync($"/v1/runs/{id}/artifacts/{path}");
        Assert.True(r.IsSuccessStatusCode, $"{path}: {(int)r.StatusCode} {await r.Content.ReadAsStringAsync()}");
        return await r.Content.ReadAsByteArrayAsync();
    }

    /// <summary>summary.json without its timings.</summary>
    static JsonObject Figures(JsonNode summary)
    {
        var o = summary.DeepClone().AsObject();
        foreach (string k in new[] { "seconds", "tokens_per_second", "label_seconds", "train_seconds" }) o.Remove(k);
        return o;
    }

    /// <summary>Runs the CLI (<c>dotnet rlhf.dll args</c>) as a process with a deadline; returns its exit code and output.</summary>
    static (int Code, string Err) Cli(params string[] args) => ServerProcess.RunCli(RunDeadline, null, args);

    [Fact]
    public async Task MetricStreamsResumeAfterTheLastEventIdAndTheApiIsDescribed()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        using var server = Start(Path.Combine(dir, "runs"));
        var http = server.Http;
        string id = await Submit(http, "sft", TinySft(SftTrainerTests.TinyArchitecture()));
        Assert.Equal("succeeded", (await Follow(http, id)).End);

        // a reconnect with Last-Event-ID: 2 gets rows 3 and 4 (ids 3, 4) and the end, not every row again
        using var cts = new CancellationTokenSource(RunDeadline);
        using var request = new HttpRequestMessage(HttpMethod.Get, $"/v1/runs/{id}/metrics?follow=true");
        request.Headers.Add("Last-Event-ID", "2");
        using var r = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
        string text = await r.Content.ReadAsStringAsync(cts.Token);
        var ids = text.Split('\n').Where(l => l.StartsWith("id: ", StringComparison.Ordinal)).Select(l => int.Parse(l[4..], System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal([3, 4], ids);
        Assert.Equal([3, 4], text.Split('\n').Where(l => l.StartsWith("data: {\"stage\"", StringComparison.Ordinal)).Select(l => (int)JsonNode.Parse(l[6..])!["step"]!));
        Assert.Contains("event: end", text);
        using var bad = new HttpRequestMessage(HttpMethod.Get, $"/v1/runs/{id}/metrics?follow=true");
        bad.Headers.Add("Last-Event-ID", "x");
        Assert.Equal(HttpStatusCode.BadRequest, (await http.SendAsync(bad)).StatusCode);

        // the OpenAPI document names every HTTP route
        var doc = JsonNode.Parse(await http.GetStringAsync("/openapi/v1.json"))!;
        var paths = doc["paths"]!.AsObject().Select(p => p.Key).ToHashSet();
        foreach (string path in new[] { "/v1/runs", "/v1/runs/{id}", "/v1/runs/{id}/cancel", "/v1/runs/{id}/resume", "/v1/runs/{id}/metrics", "/v1/runs/{id}/artifacts", "/v1/runs/{id}/artifacts/{path}" })
            Assert.Contains(path, paths);
        Assert.Equal("Submit a run", (string)doc["paths"]!["/v1/runs"]!["post"]!["summary"]!);
    }

    [Fact]
    public async Task SftThenPipelineOverHttpEqualTheCli()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        string arch = SftTrainerTests.TinyArchitecture();
        using var server = Start(Path.Combine(dir, "runs"));
        var http = server.Http;

        string sft = await Submit(http, "sft", TinySft(arch));
        var (rows, end) = await Follow(http, sft);
        Assert.Equal("succeeded", end);
        Assert.Equal([1, 2, 3, 4], rows.Select(r => (int)r["step"]!));
        Assert.All(rows, r => Assert.Equal(("sft", 4), ((string)r["stage"]!, (int)r["total"]!)));
        var status = await Status(http, sft);
        Assert.Equal(("succeeded", 4, 4), ((string)status["status"]!, (int)status["step"]!, (int)status["total"]!));
        Assert.Equal(HttpStatusCode.BadRequest, (await http.PostAsync($"/v1/runs/{sft}/resume", null)).StatusCode);   // nothing to resume

        // the same config through the CLI: same weights, same figures, same metrics rows
        string cfgFile = Path.Combine(dir, "sft.json");
        File.WriteAllText(cfgFile, TinySft(arch).ToJsonString());
        string cliOut = Path.Combine(dir, "cli-sft");
        var (code, err) = Cli("sft", "--config", cfgFile, "--out", cliOut);
        Assert.True(code == 0, err);
        Assert.Equal(File.ReadAllBytes(Path.Combine(cliOut, "model.safetensors")), await Artifact(http, sft, "model.safetensors"));
        var served = JsonNode.Parse(await Artifact(http, sft, "summary.json"))!;
        Assert.True(JsonNode.DeepEquals(Figures(JsonNode.Parse(File.ReadAllText(Path.Combine(cliOut, "summary.json")))!), Figures(served)));
        Assert.True(JsonNode.DeepEquals(Figures(served), Figures(status["summary"]!)));
        var csv = MetricsTable.ReadCsv(Path.Combine(cliOut, "metrics.csv"));
        for (int i = 0; i < 4; i++)
            foreach (var (k, v) in csv.Rows[i].Where(kv => kv.Key != "tokens/s"))
                Assert.Equal(v, (double)rows[i]["metrics"]![k]!);

        var files = (await Json(await http.GetAsync($"/v1/runs/{sft}/artifacts")))["files"]!.AsArray().Select(f => (string)f!["path"]!).ToList();
        foreach (string f in new[] { "model.safetensors", "summary.json", "metrics.csv", "loss.png", "onnx/model.onnx", "checkpoint/trainer_state.json" })
            Assert.Contains(f, files);

        // gRPC WatchMetrics streams the same rows
        using (var channel = GrpcChannel.ForAddress(server.Process.Address))
        {
            var client = new Rlhf.Training.Service.Grpc.Runs.RunsClient(channel);
            using var call = client.WatchMetrics(new Rlhf.Training.Service.Grpc.WatchMetricsRequest { RunId = sft, Follow = true },
                new Metadata { { "authorization", "Bearer " + Token } }, DateTime.UtcNow.AddSeconds(30));
            var grpcRows = new List<Rlhf.Training.Service.Grpc.MetricsRow>();
            while (await call.ResponseStream.MoveNext(CancellationToken.None)) grpcRows.Add(call.ResponseStream.Current);
            Assert.Equal([1, 2, 3, 4], grpcRows.Select(r => r.Step));
            Assert.Equal(rows.Select(r => (double)r["metrics"]!["loss/train"]!), grpcRows.Select(r => r.Values["loss/train"]));
        }

        // a tiny pipeline whose SFT section is the same SFT: its events come stage by stage, its sft/ weights equal the CLI's
        var sftSection = TinySft(arch);
        sftSection.Remove("seed");
        sftSection.Remove("threads");
        var pipeline = new JsonObject
        {
            ["seed"] = 3, ["threads"] = 1, ["sft"] = sftSection,
            ["rm"] = new JsonObject { ["train_prompts"] = 8, ["eval_prompts"] = 4, ["k"] = 2, ["prompts_per_batch"] = 4, ["epochs"] = 1, ["max_new_tokens"] = 6, ["max_seq_len"] = 40 },
            ["ppo"] = new JsonObject { ["default_prompts"] = 16, ["eval_prompts"] = 4, ["iterations"] = 2, ["rollout_batch"] = 4, ["mini_batch"] = 4, ["ppo_epochs"] = 1, ["max_new_tokens"] = 6, ["best_of_n"] = new JsonArray(1, 2) },
        };
        string pipe = await Submit(http, "pipeline", pipeline);
        var (pipeRows, pipeEnd) = await Follow(http, pipe);
        Assert.Equal("succeeded", pipeEnd);
        Assert.Equal(["sft", "rm", "ppo"], pipeRows.Select(r => (string)r["stage"]!).Distinct());
        Assert.Equal([1, 2], pipeRows.Where(r => (string)r["stage"]! == "ppo").Select(r => (int)r["step"]!));
        Assert.Equal(File.ReadAllBytes(Path.Combine(cliOut, "model.safetensors")), await Artifact(http, pipe, "sft/model.safetensors"));
        var pipeSummary = (await Status(http, pipe))["summary"]!;
        Assert.Equal("pipeline", (string)pipeSummary["stage"]!);
        Assert.True(JsonNode.DeepEquals(Figures(pipeSummary["ppo"]!), Figures(JsonNode.Parse(await Artifact(http, pipe, "ppo/summary.json"))!)));
        Assert.True((await Artifact(http, pipe, "ppo/model.safetensors")).Length > 0);
        var list = (await Json(await http.GetAsync("/v1/runs")))["runs"]!.AsArray();
        Assert.Equal([sft, pipe], list.Select(r => (string)r!["id"]!));
    }

    [Fact]
    public async Task AKilledServerResumesItsRunOnRestartExactly()
    {
        string runsDir = Path.Combine(Directory.CreateTempSubdirectory().FullName, "runs");
        string id;
        using (var server = Start(runsDir))
        {
            id = await Submit(server.Http, "sft", EndlessSft(EndlessArch.Value));
            var (_, end) = await Follow(server.Http, id, r => (int)r["step"]! >= 6);
            Assert.Null(end);
            server.Process.Kill();   // SIGKILL mid-run
        }
        var stored = JsonNode.Parse(File.ReadAllText(Path.Combine(runsDir, id, "run.json")))!;
        Assert.Equal("running", (string)stored["status"]!);
        int killedAfter = (int)stored["step"]!;   // the last step the killed server recorded (its checkpoint may be older)
        Assert.True(killedAfter >= 6);
        int checkpoint = (int)JsonNode.Parse(File.ReadAllText(Path.Combine(runsDir, id, "out", "checkpoint", "trainer_state.json")))!["step"]!;
        Assert.InRange(checkpoint, 4, killedAfter + 1);   // the cadence's last (written before the step is recorded)

        // restarted, the server resumes the run from its last checkpoint; it goes past the kill, then the test stops it
        using (var server = Start(runsDir))
        {
            var (_, end) = await Follow(server.Http, id, r => (int)r["step"]! >= killedAfter + 2);
            Assert.Null(end);
            Assert.Equal(2, (int)(await Status(server.Http, id))["attempts"]!);
            AssertResumedFrom(server, id, checkpoint);
            Assert.Equal(HttpStatusCode.OK, (await server.Http.PostAsync($"/v1/runs/{id}/cancel", null)).StatusCode);
            Assert.Equal("cancelled", (string)(await WaitFor(server.Http, id, "cancelled", "failed"))["status"]!);
            await AssertStoppedExactly(server.Http, id, killedAfter + 2);
        }
    }

    [Fact]
    public async Task CancelStopsAtAStepWithItsCheckpointAndResumeContinuesExactly()
    {
        string runsDir = Path.Combine(Directory.CreateTempSubdirectory().FullName, "runs");
        using var server = Start(runsDir);
        var http = server.Http;
        string id = await Submit(http, "sft", EndlessSft(EndlessArch.Value));
        var (seen, _) = await Follow(http, id, r => (int)r["step"]! >= 2);

        // 20 status requests at once while it trains: all answered, all running (the run cannot have ended)
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            var answers = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => http.GetAsync($"/v1/runs/{id}", cts.Token)));
            Assert.All(answers, a => Assert.Equal(HttpStatusCode.OK, a.StatusCode));
            foreach (var a in answers) Assert.Equal("running", (string)(await Json(a))["status"]!);
        }

        var cancel = await http.PostAsync($"/v1/runs/{id}/cancel", null);
        Assert.Equal(HttpStatusCode.OK, cancel.StatusCode);
        Assert.Equal("cancelled", (string)(await WaitFor(http, id, "cancelled", "failed"))["status"]!);
        int step = await AssertStoppedExactly(http, id, (int)seen[^1]["step"]!);

        // resumed, it continues from that checkpoint: two steps further, stopped again, equal to an uninterrupted run there
        var resumed = await Json(await http.PostAsync($"/v1/runs/{id}/resume", null));
        Assert.Equal("queued", (string)resumed["status"]!);
        var (more, end) = await Follow(http, id, r => (int)r["step"]! >= step + 2);
        Assert.Null(end);
        Assert.Equal(2, (int)(await Status(http, id))["attempts"]!);
        AssertResumedFrom(server, id, step);
        Assert.Equal(HttpStatusCode.OK, (await http.PostAsync($"/v1/runs/{id}/cancel", null)).StatusCode);
        Assert.Equal("cancelled", (string)(await WaitFor(http, id, "cancelled", "failed"))["status"]!);
        await AssertStoppedExactly(http, id, step + 2);
    }

    /// <summary>GET <paramref name="path"/> sent byte for byte (as curl --path-as-is), returning status and the whole response.</summary>
    static (int Status, string Text) RawGet(int port, string path)
    {
        using var tcp = new TcpClient { ReceiveTimeout = 10_000, SendTimeout = 10_000 };
        tcp.Connect(IPAddress.Loopback, port);
        using var stream = tcp.GetStream();
        stream.Write(Encoding.ASCII.GetBytes($"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {Token}\r\nConnection: close\r\n\r\n"));
        string text = new StreamReader(stream).ReadToEnd();
        return (int.Parse(text.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture), text);
    }

    [Fact]
    public async Task TokensPathsAndBadRequestsAreRefusedAndTheServerKeepsServing()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        string dataRoot = Path.Combine(dir, "data");
        Directory.CreateDirectory(dataRoot);
        File.Copy(SftTrainerTests.TinyArchitecture(), Path.Combine(dataRoot, "arch.json"));
        string secret = Path.Combine(dir, "secret.txt");
        File.WriteAllText(secret, "TOPSECRET");
        string runsDir = Path.Combine(dir, "runs");
        using var server = Start(runsDir, "--data-root", dataRoot);
        var http = server.Http;

        // no token, wrong token
        using (var anonymous = new HttpClient { BaseAddress = new Uri(server.Process.Address), Timeout = TimeSpan.FromSeconds(30) })
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/v1/runs")).StatusCode);
            anonymous.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Token + "x");
            Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/v1/runs")).StatusCode);
            Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.PostAsync("/v1/runs", Body(new JsonObject { ["stage"] = "sft", ["config"] = new JsonObject() }))).StatusCode);
        }

        async Task<string> BadRequest(HttpContent body, HttpStatusCode expected = HttpStatusCode.BadRequest)
        {
            var r = await http.PostAsync("/v1/runs", body);
            string text = await r.Content.ReadAsStringAsync();
            Assert.True(r.StatusCode == expected, $"{(int)r.StatusCode}: {text}");
            return (string)JsonNode.Parse(text)!["error"]!["message"]!;
        }
        StringContent Run(string stage, JsonObject config) => Body(new JsonObject { ["stage"] = stage, ["config"] = config });

        string unknown = await BadRequest(Run("sft", new JsonObject { ["learning_rate"] = 1 }));
        Assert.Contains("unknown config key 'learning_rate'", unknown);
        Assert.Contains("Known keys: adam_eps, attention_dropout, batch_size", unknown);
        Assert.Contains("batch_size must be ≥ 1", await BadRequest(Run("sft", new JsonObject { ["batch_size"] = 0 })));
        Assert.Contains("Known keys of 'rm'", await BadRequest(Run("pipeline", new JsonObject { ["rm"] = new JsonObject { ["kk"] = 2 } })));
        Assert.Contains("stage must be one of sft, rm, ppo, dpo, pipeline", await BadRequest(Run("kto", [])));
        Assert.Contains("Malformed JSON", await BadRequest(new StringContent("{\"stage\": \"sft\", \"config\": {", Encoding.UTF8, "application/json")));
        Assert.Contains("at most 4096", await BadRequest(Run("sft", new JsonObject { ["train_file"] = new string('a', 5000) })));
        await BadRequest(new StringContent(new string(' ', (1 << 20) + 10) + "{}", Encoding.UTF8, "application/json"), HttpStatusCode.RequestEntityTooLarge);
        Assert.Contains("out is set by the server", await BadRequest(Run("sft", new JsonObject { ["out"] = "elsewhere" })));
        foreach (string outside in new[] { "../secret.txt", secret, "/etc/passwd" })
            Assert.Contains("outside the server's --data-root", await BadRequest(Run("sft", new JsonObject { ["train_file"] = outside })));
        File.CreateSymbolicLink(Path.Combine(dataRoot, "link.csv"), secret);
        Assert.Contains("outside the server's --data-root", await BadRequest(Run("sft", new JsonObject { ["train_file"] = "link.csv" })));
        Assert.Contains("outside the server's --data-root", await BadRequest(Run("pipeline", new JsonObject { ["sft"] = new JsonObject { ["init_from"] = "../.." } })));
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/v1/runs/nope")).StatusCode);

        // a run whose model_config is relative to --data-root; the server kept serving through all of the above
        var cfg = TinySft("arch.json");
        cfg["sample_count"] = 0;
        string id = await Submit(http, "sft", cfg);
        Assert.Equal("succeeded", (string)(await WaitFor(http, id, "succeeded", "failed"))["status"]!);
        Assert.Equal(Path.Combine(Path.GetFullPath(dataRoot), "arch.json"), (string)(await Status(http, id))["config"]!["model_config"]!);

        // artifact paths that lead outside the run's output folder: refused, never the file
        File.WriteAllText(Path.Combine(runsDir, id, "secret.txt"), "TOPSECRET");
        File.CreateSymbolicLink(Path.Combine(runsDir, id, "out", "link.txt"), secret);
        foreach (string path in new[] { "../secret.txt", "..%2fsecret.txt", "%2e%2e/secret.txt", "%2e%2e%2fsecret.txt", "%252e%252e%252fsecret.txt",
                                        "checkpoint/../../secret.txt", "/" + secret.TrimStart('/'), "%2f" + secret.TrimStart('/').Replace("/", "%2f"), "link.txt" })
        {
            var (code, text) = RawGet(server.Process.Port, $"/v1/runs/{id}/artifacts/{path}");
            Assert.True(code is 400 or 404, $"{path}: {code}");
            Assert.DoesNotContain("TOPSECRET", text);
        }
        Assert.Equal(200, RawGet(server.Process.Port, $"/v1/runs/{id}/artifacts/summary.json").Status);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync($"/v1/runs/{id}/artifacts/nothing.bin")).StatusCode);
    }

    [Fact]
    public void StartingWithoutATokenNeedsInsecureNoAuthOnLoopback()
    {
        string runs = Directory.CreateTempSubdirectory().FullName;
        Assert.Contains("--token-file is required", Assert.Throws<ArgumentException>(() => new TrainServeOptions { Port = 7000, RunsDir = runs }.Validate()).Message);
        Assert.Contains("only serves a loopback address",
            Assert.Throws<ArgumentException>(() => new TrainServeOptions { Port = 7000, RunsDir = runs, Host = "0.0.0.0", InsecureNoAuth = true }.Validate()).Message);
        new TrainServeOptions { Port = 7000, RunsDir = runs, InsecureNoAuth = true }.Validate();
        var (code, err) = Cli("serve", "train", "--port", "7000", "--runs-dir", runs);
        Assert.Equal(1, code);
        Assert.StartsWith("error: --token-file is required", err.Trim());
    }

    [Fact]
    public void TheDocsPageAndHelpNameEveryOptionAndEndpoint()
    {
        string page = Common.DocsPages.Docs("training-service.md");
        string section = Common.DocsPages.Section(page, "# Training as a service");
        var command = Rlhf.Training.Cli.ServeTrainCommand.Create();
        foreach (var option in command.Options)
            Assert.True(section.Contains(option.Name, StringComparison.Ordinal), $"docs/training-service.md lacks {option.Name}");
        foreach (string endpoint in new[] { "POST /v1/runs", "GET /v1/runs", "/v1/runs/{id}", "/metrics", "follow=true", "/cancel", "/resume", "/artifacts", "WatchMetrics" })
            Assert.Contains(endpoint, command.Description, StringComparison.Ordinal);
        foreach (string curl in new[] { "/v1/runs -H", "/v1/runs/$ID -H", "/v1/runs/$ID/metrics -H", "/v1/runs/$ID/metrics?follow=true", "-X POST http://127.0.0.1:7200/v1/runs/$ID/cancel",
                                        "-X POST http://127.0.0.1:7200/v1/runs/$ID/resume", "/v1/runs/$ID/artifacts -H", "/v1/runs/$ID/artifacts/ppo/model.safetensors" })
            Assert.Contains(curl, section, StringComparison.Ordinal);
        Assert.Contains("docs/training-service.md", Common.DocsPages.Readme(), StringComparison.Ordinal);   // the README links the page
    }
}
