using System.CommandLine;
using Rlhf.Export;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Service;
using static TorchSharp.torch;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf serve train</c>: the training server (added to the inference server's <c>serve</c> command).</summary>
internal static class ServeTrainCommand
{
    /// <summary>The <c>serve</c> command with <c>rollout</c>, <c>reward</c> and <c>train</c>.</summary>
    public static Command Serve()
    {
        var serve = Rlhf.Inference.Serving.ServeCommand.Create(ExportForServing);
        serve.Description = "Run a service: an inference replica (rollout: gRPC + OpenAI-compatible HTTP; reward: gRPC + OpenRLHF's /get_reward) or the training server (train: runs submitted over HTTP/gRPC).";
        serve.Subcommands.Add(Create());
        return serve;
    }

    /// <summary>
    /// An HF model folder exported (the default rollout graph, no parity check) to a temporary folder that is deleted
    /// when the process exits, for <c>rlhf serve rollout --model</c>.
    /// </summary>
    static string ExportForServing(string folder)
    {
        string temp = Path.Combine(Path.GetTempPath(), $"rlhf-serve-{Guid.NewGuid():N}");
        Console.Error.WriteLine($"rlhf serve: {folder} is an HF model folder; exporting it to {temp} (deleted at exit).");
        using (var lm = LlamaForCausalLM.FromPretrained(folder, CPU, ScalarType.Float32))
            ExportStage.ExportPolicy(lm, temp, ExportStage.DefaultGraph(lm.Config), new ExportOptions { TokenizerFolder = folder, Stage = "serve" }, parity: false);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(temp, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        };
        return temp;
    }

    internal static Command Create()
    {
        var port = new Option<int>("--port") { Description = "TCP port (HTTP/JSON and gRPC share it).", Required = true };
        var host = new Option<string>("--host") { Description = "Address to listen on.", DefaultValueFactory = _ => "127.0.0.1" };
        var runsDir = new Option<string>("--runs-dir") { Description = "Folder of the run records and outputs (one sub-folder per run); runs survive a restart.", Required = true };
        var token = new Option<string?>("--token-file") { Description = "File holding the bearer token; every call but the gRPC health check must send 'Authorization: Bearer <token>'." };
        var dataRoot = new Option<string?>("--data-root") { Description = "Confine every path a submitted config names (train_file, init_from, sft_model, ...) to this folder; relative paths are taken from it." };
        var insecure = new Option<bool>("--insecure-no-auth") { Description = "Serve without a token (only on a loopback --host)." };
        var logFormat = Rlhf.Inference.Serving.ServeCommand.LogFormatOption();
        var cmd = new Command("train",
            "Serve training runs: POST /v1/runs {\"stage\": \"sft|rm|ppo|dpo|pipeline\", \"config\": {...}}, GET /v1/runs[/{id}], GET /v1/runs/{id}/metrics[?follow=true], " +
            "POST /v1/runs/{id}/cancel, POST /v1/runs/{id}/resume, GET /v1/runs/{id}/artifacts[/{path}]; gRPC rlhf.training.v1.Runs/WatchMetrics. One run at a time; a run interrupted by a restart resumes from its checkpoint.")
            { port, host, runsDir, token, dataRoot, insecure, logFormat };
        cmd.SetAction(r => RlhfCommand.Guard(() => TrainServer.Run(new TrainServeOptions
        {
            Port = r.GetValue(port), Host = r.GetValue(host)!, RunsDir = r.GetValue(runsDir)!, TokenFile = r.GetValue(token),
            DataRoot = r.GetValue(dataRoot), InsecureNoAuth = r.GetValue(insecure), JsonLogs = r.GetValue(logFormat) == "json",
        })));
        return cmd;
    }
}
