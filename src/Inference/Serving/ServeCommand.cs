using System.CommandLine;
using Rlhf.Inference.Rollout;

namespace Rlhf.Inference.Serving;

/// <summary>
/// <c>serve rollout|reward</c>: the inference server's command line, shared by the <c>rlhf-serve</c> executable and
/// <c>rlhf serve</c>.
/// </summary>
public static class ServeCommand
{
    /// <summary>The <c>serve</c> command with its two sub-commands (for <c>rlhf serve</c>, which exports an HF <c>--model</c> folder with <paramref name="exportHf"/>).</summary>
    public static Command Create(Func<string, string>? exportHf = null)
    {
        var serve = new Command("serve", "Run an inference replica: a rollout replica (gRPC + OpenAI-compatible HTTP) or a reward replica (gRPC + OpenRLHF's /get_reward).");
        serve.Subcommands.Add(Rollout(exportHf));
        serve.Subcommands.Add(Reward());
        return serve;
    }

    /// <summary>The <c>rlhf-serve</c> executable: <c>rlhf-serve rollout|reward ...</c>. Returns the exit code (2: bad command line, 1: failure).</summary>
    public static int RunStandalone(string[] args)
    {
        var root = new RootCommand("rlhf-serve: Rlhf's inference server (ONNX Runtime, no TorchSharp).") { Rollout(), Reward() };
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            Console.Error.WriteLine($"error: {string.Join(" ", parsed.Errors.Select(e => e.Message))} (see: rlhf-serve --help)");
            return 2;
        }
        return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
    }

    static Option<int> PortOption() => new("--port") { Description = "TCP port (gRPC and HTTP share it).", Required = true };
    static Option<string> HostOption() => new("--host") { Description = "Address to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 / :: (every interface, e.g. in a container).", DefaultValueFactory = _ => "127.0.0.1" };
    static Option<int> ThreadsOption() => new("--threads") { Description = "ONNX Runtime intra-op threads (0 = all cores).", DefaultValueFactory = _ => 0 };
    static Option<string?> TokenOption() => new("--token-file") { Description = "File holding a bearer token; then every call but health checks must send 'Authorization: Bearer <token>'." };

    /// <summary><c>--log-format text|json</c>, shared with <c>serve train</c>.</summary>
    public static Option<string> LogFormatOption()
    {
        var o = new Option<string>("--log-format") { Description = "text (default) or json: JSON lines, one per event, with a request log (method, route, status, ms).", DefaultValueFactory = _ => "text" };
        o.AcceptOnlyFromAmong("text", "json");
        return o;
    }

    static Command Rollout(Func<string, string>? exportHf = null)
    {
        var model = new Option<string>("--model")
        {
            Description = "The policy: an ONNX folder (genai_config.json, model.onnx, tokenizer files, as rlhf export writes), a stage folder (its onnx/), or an HF model folder" +
                          (exportHf is null ? " once exported (rlhf export)." : " (exported to a temporary folder first)."),
            Required = true,
        };
        var port = PortOption();
        var host = HostOption();
        var threads = ThreadsOption();
        var engine = new Option<string>("--engine") { Description = "ort (our engine) or genai (ONNX Runtime GenAI).", DefaultValueFactory = _ => "ort" };
        engine.AcceptOnlyFromAmong(RolloutEngines.Name(RolloutEngineKind.Ort), RolloutEngines.Name(RolloutEngineKind.Genai));
        var token = TokenOption();
        var maxBatch = new Option<int>("--max-batch") { Description = "Most sequences per request (prompts x n) and per engine batch (rows decoding together).", DefaultValueFactory = _ => 256 };
        var maxQueue = new Option<int>("--max-queue") { Description = "Most sequences waiting for the engine; more get 429 with Retry-After (gRPC RESOURCE_EXHAUSTED).", DefaultValueFactory = _ => 1024 };
        var batching = new Option<string>("--batching")
        {
            Description = "continuous (default): a call joins the running batch at the next decode step and a finished row frees its slot at once (the ort engine; genai batches at call boundaries); " +
                          "call: calls that wait while a batch runs go to the engine together when it ends.",
            DefaultValueFactory = _ => "continuous",
        };
        batching.AcceptOnlyFromAmong("continuous", "call");
        var logFormat = LogFormatOption();
        var cmd = new Command("rollout", "Serve a policy: gRPC Generate/PushWeights/GetStatus + grpc.health.v1, and GET /v1/models, POST /v1/completions and /v1/chat/completions (streaming or not), GET /health, /ready, /metrics.")
            { model, port, host, threads, engine, token, maxBatch, maxQueue, batching, logFormat };
        cmd.SetAction(r => Guard(() =>
        {
            var options = new RolloutServeOptions
            {
                Model = r.GetValue(model)!, Port = r.GetValue(port), Host = r.GetValue(host)!, Threads = r.GetValue(threads), TokenFile = r.GetValue(token),
                Engine = RolloutEngines.Parse(r.GetValue(engine)!), MaxBatch = r.GetValue(maxBatch), ExportHfFolder = exportHf,
                JsonLogs = r.GetValue(logFormat) == "json", MaxQueue = r.GetValue(maxQueue),
                Batching = r.GetValue(batching) == "call" ? BatchingMode.CallBoundary : BatchingMode.Continuous,
            };
            return ServeHost.Run(ServeHost.BuildRollout(options), $"rollout replica of {options.Model}", options.Host, options.Port, options.JsonLogs);
        }));
        return cmd;
    }

    static Command Reward()
    {
        var model = new Option<string>("--reward-model") { Description = "Reward model: our RM's onnx/ folder or an external sequence-classification ONNX folder (or .onnx file).", Required = true };
        var port = PortOption();
        var host = HostOption();
        var threads = ThreadsOption();
        var token = TokenOption();
        var maxBatch = new Option<int>("--max-batch") { Description = "Most texts per request.", DefaultValueFactory = _ => 1024 };
        var logFormat = LogFormatOption();
        var cmd = new Command("reward", "Serve a reward model: gRPC Score + grpc.health.v1, and POST /get_reward ({\"query\": [...], \"prompts\": [...]} -> {\"rewards\": [...]}), GET /health, /ready, /metrics.")
            { model, port, host, threads, token, maxBatch, logFormat };
        cmd.SetAction(r => Guard(() =>
        {
            var options = new RewardServeOptions
            {
                RewardModel = r.GetValue(model)!, Port = r.GetValue(port), Host = r.GetValue(host)!, Threads = r.GetValue(threads), TokenFile = r.GetValue(token), MaxBatch = r.GetValue(maxBatch),
                JsonLogs = r.GetValue(logFormat) == "json",
            };
            return ServeHost.Run(ServeHost.BuildReward(options), $"reward replica of {options.RewardModel}", options.Host, options.Port, options.JsonLogs);
        }));
        return cmd;
    }

    static int Guard(Func<int> body)
    {
        try { return body(); }
        catch (Exception e)
        {
            Console.Error.WriteLine("error: " + (e is ArgumentException or IOException or InvalidDataException ? e.Message : "internal error: " + e.Message));
            return 1;
        }
    }
}
