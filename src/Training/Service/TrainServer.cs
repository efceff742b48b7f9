using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Rlhf.Inference.Serving;
using Rlhf.Training.Common;

namespace Rlhf.Training.Service;

/// <summary>
/// <c>rlhf serve train</c>: the inference server's host (Kestrel, gRPC and HTTP on one port, bearer token, gRPC health)
/// serving <see cref="TrainEndpoints"/> and <see cref="RunsGrpcService"/> over a <see cref="TrainRuns"/> queue.
/// </summary>
public static class TrainServer
{
    /// <summary>Builds the server (runs loaded, worker not yet started).</summary>
    public static WebApplication Build(TrainServeOptions options)
    {
        options.Validate();
        string? token = ServeChecks.ReadToken(options.TokenFile);
        var runs = new TrainRuns(new RunStore(options.RunsDir), options.DataRoot, StageLog.Stderr);
        var app = ServeHost.Build(options.Host, options.Port, token, services =>
        {
            services.AddSingleton(runs);
            services.AddOpenApi(o => o.AddDocumentTransformer((doc, _, _) =>
            {
                doc.Info.Title = "rlhf serve train";
                doc.Info.Description = "Training runs (sft, rm, ppo, dpo, pipeline) submitted, watched, cancelled, resumed and downloaded; docs/training-service.md.";
                return Task.CompletedTask;
            }));
        }, jsonLogs: options.JsonLogs);
        app.MapGrpcService<RunsGrpcService>();
        TrainEndpoints.Map(app, runs);
        app.MapOpenApi("/openapi/{documentName}.json");
        app.Lifetime.ApplicationStarted.Register(runs.Start);
        app.Lifetime.ApplicationStopping.Register(runs.Dispose);
        return app;
    }

    /// <summary>Runs until SIGINT/SIGTERM (a running stage then stops at a step boundary and resumes on the next start).</summary>
    public static int Run(TrainServeOptions options)
    {
        var app = Build(options);
        app.Lifetime.ApplicationStarted.Register(() => ServeHost.StartupLine(
            $"rlhf serve train: runs in {Path.GetFullPath(options.RunsDir)}, listening on http://{options.Host}:{options.Port}", options.JsonLogs));
        app.Run();
        return 0;
    }
}
