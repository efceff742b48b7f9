using System.Buffers;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core.Features;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Serving;

/// <summary>
/// The Kestrel host of a rollout or reward replica: one port (on 127.0.0.1 unless told otherwise) serving gRPC (HTTP/2 with prior knowledge)
/// and HTTP/1.1 JSON side by side, <c>grpc.health.v1</c>, <c>GET /health</c> (liveness), <c>GET /ready</c> (readiness:
/// the model loaded and the server not draining), <c>GET /metrics</c> (Prometheus text of <see cref="ServeMetrics"/>),
/// traces over OTLP when <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> is set, and a bearer token on everything but health, readiness
/// and metrics when a token file is given. SIGTERM drains: /ready turns 503, new connections stop, calls in flight finish.
/// </summary>
public static class ServeHost
{
    /// <summary>Builds the rollout replica (engine loaded, not yet listening).</summary>
    public static WebApplication BuildRollout(RolloutServeOptions options)
    {
        options.Validate();
        string? token = ServeChecks.ReadToken(options.TokenFile);
        string requested = Path.GetFullPath(options.Model);
        string folder = Path.GetFullPath(options.PolicyFolder());
        TextTokenizer? tokenizer;
        try { tokenizer = TextTokenizer.Load(folder); }
        catch (FileNotFoundException) { tokenizer = null; }   // ids in, ids out
        IRolloutService engine = RolloutEngines.OpenOnnx(options.Engine, folder, tokenizer, options.Threads);
        ChatTemplate? chat = null;
        string? chatProblem = null;
        try { chat = ChatTemplate.TryLoad(folder); }
        catch (ChatTemplateException e)
        {
            chatProblem = $"This model folder's chat template cannot be used ({e.Message}); use POST /v1/completions.";
            Console.Error.WriteLine("rlhf-serve: warning: " + chatProblem);
        }
        var replica = new RolloutReplica(engine, tokenizer, ModelName(requested), RolloutEngines.Name(options.Engine), options.MaxBatch, chat, chatProblem, options.MaxQueue, options.Batching);
        ServeMetrics.Observe(replica);
        var app = Build(options.Host, options.Port, token, services => services.AddSingleton(replica),
            () => new Dictionary<string, object> { ["model"] = replica.ModelName, ["weights_version"] = replica.Engine.WeightsVersion, ["queued"] = replica.Queued, ["queued_sequences"] = replica.QueuedSequences },
            options.JsonLogs);
        app.MapGrpcService<RolloutGrpcService>();
        OpenAiEndpoints.Map(app);
        app.Lifetime.ApplicationStopped.Register(replica.Dispose);
        return app;
    }

    /// <summary>Builds the reward replica (model loaded, not yet listening).</summary>
    public static WebApplication BuildReward(RewardServeOptions options)
    {
        options.Validate();
        string? token = ServeChecks.ReadToken(options.TokenFile);
        var scorer = RewardScorer.Load(options.RewardModel, new RewardScorerOptions { Threads = options.Threads });
        var replica = new RewardReplica(scorer, ModelName(Path.GetFullPath(options.RewardModel)), options.MaxBatch);
        var app = Build(options.Host, options.Port, token, services => services.AddSingleton(replica),
            () => new Dictionary<string, object> { ["model"] = replica.ModelName }, options.JsonLogs);
        app.MapGrpcService<RewardGrpcService>();
        RewardEndpoints.Map(app);
        app.Lifetime.ApplicationStopped.Register(replica.Dispose);
        return app;
    }

    /// <summary>Runs <paramref name="app"/> until SIGINT/SIGTERM, printing one line when it listens.</summary>
    public static int Run(WebApplication app, string what, string host, int port, bool jsonLogs = false)
    {
        string address = new UriBuilder("http", host, port).Uri.GetLeftPart(UriPartial.Authority);
        app.Lifetime.ApplicationStarted.Register(() => StartupLine($"rlhf-serve: {what} listening on {address}", jsonLogs));
        app.Run();
        return 0;
    }

    /// <summary>The one line a server prints when it listens: plain, or a JSON object like the JSON log lines.</summary>
    public static void StartupLine(string message, bool json) => Console.WriteLine(json
        ? System.Text.Json.JsonSerializer.Serialize(new { Timestamp = DateTimeOffset.UtcNow.ToString("O"), LogLevel = "Information", Category = "Rlhf.Serve", Message = message })
        : message);

    static string ModelName(string path) => Path.GetFileName(Path.TrimEndingDirectorySeparator(path));

    /// <summary>
    /// The shared host (also of <c>rlhf serve train</c>): Kestrel on <paramref name="host"/> with gRPC and HTTP/1.1 on one
    /// port, <c>grpc.health.v1</c>, and the bearer token on everything but health when <paramref name="token"/> is given.
    /// </summary>
    /// <param name="readiness">what <c>GET /ready</c> reports beside <c>ready</c> (model, weights version, ...)</param>
    /// <param name="jsonLogs">log JSON lines (a request log at Information included) instead of plain warnings</param>
    public static WebApplication Build(string host, int port, string? token, Action<IServiceCollection> register,
        Func<IReadOnlyDictionary<string, object>>? readiness = null, bool jsonLogs = false)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        if (jsonLogs)
            builder.Logging.AddJsonConsole(o => o.TimestampFormat = "O").SetMinimumLevel(LogLevel.Warning).AddFilter(RequestLogCategory, LogLevel.Information);
        else
            builder.Logging.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AllowAlternateSchemes = true;   // HTTP/2 requests say :scheme http on the sniffed cleartext connection
            k.Limits.MaxRequestBodySize = 64L << 20;
            k.Listen(IPAddress.Parse(host), port, l =>
            {
                l.Protocols = HttpProtocols.Http1AndHttp2;
                l.Use(SniffHttp2);
            });
        });
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = 8 << 20;   // weight chunks are <= 1 MiB; shards of prompts are small
            o.EnableDetailedErrors = true;
        });
        var telemetry = builder.Services.AddOpenTelemetry().WithMetrics(m => m.AddMeter(ServeMetrics.MeterName).AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0));
        if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable("OTEL_EXPORTER_OTLP_ENDPOINT")))
            telemetry.WithTracing(t => t.AddSource(ReplicaPool.Trace.Name).AddOtlpExporter());
        builder.Services.AddGrpcHealthChecks().AddCheck("engine", () => Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Healthy());
        register(builder.Services);
        var app = builder.Build();
        var requestLog = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger(RequestLogCategory);
        app.Use((ctx, next) => CountRequests(ctx, next, requestLog));
        if (token is not null) app.Use(Authenticate(token));
        app.MapGrpcHealthChecksService();
        app.MapGet("/health", () => Results.Json(new { status = "alive" }));
        app.MapGet("/ready", () =>
        {
            bool draining = app.Lifetime.ApplicationStopping.IsCancellationRequested;
            var body = new Dictionary<string, object> { ["ready"] = !draining };
            foreach (var (k, v) in readiness?.Invoke() ?? new Dictionary<string, object>()) body[k] = v;
            if (draining) body["reason"] = "draining";
            return Results.Json(body, statusCode: draining ? 503 : 200);
        });
        app.MapPrometheusScrapingEndpoint("/metrics");
        return app;
    }

    /// <summary>
    /// Without TLS there is no ALPN to pick HTTP/2, and Kestrel reads an Http1AndHttp2 cleartext connection as HTTP/1.1.
    /// This connection middleware peeks at the first bytes: a connection that opens with the HTTP/2 preface
    /// (<c>PRI * HTTP/2.0</c>) is marked as having negotiated <c>h2</c>, so gRPC clients (prior knowledge) and HTTP/1.1
    /// clients share one port. Nothing is consumed.
    /// </summary>
    static ConnectionDelegate SniffHttp2(ConnectionDelegate next) => async context =>
    {
        var input = context.Transport.Input;
        while (true)
        {
            var read = await input.ReadAsync(context.ConnectionClosed);
            var buffer = read.Buffer;
            if (buffer.Length >= 3 || read.IsCompleted || read.IsCanceled)
            {
                if (buffer.Length >= 3 && buffer.Slice(0, 3).ToArray() is [(byte)'P', (byte)'R', (byte)'I'])
                {
                    context.Features.Set<ITlsApplicationProtocolFeature>(Http2Negotiated.Instance);
                    context.Features.Set<ITlsConnectionFeature>(Http2Negotiated.Instance);
                }
                input.AdvanceTo(buffer.Start);
                break;
            }
            input.AdvanceTo(buffer.Start, buffer.End);
        }
        await next(context);
    };

    sealed class Http2Negotiated : ITlsApplicationProtocolFeature, ITlsConnectionFeature
    {
        public static readonly Http2Negotiated Instance = new();
        public ReadOnlyMemory<byte> ApplicationProtocol { get; } = "h2"u8.ToArray();
        public X509Certificate2? ClientCertificate { get => null; set { } }
        public Task<X509Certificate2?> GetClientCertificateAsync(CancellationToken cancellationToken) => Task.FromResult<X509Certificate2?>(null);
    }

    /// <summary>Requires <c>Authorization: Bearer &lt;token&gt;</c> on every request but health checks.</summary>
    const string RequestLogCategory = "Rlhf.Serve.Requests";

    /// <summary>
    /// Counts every finished request by route (its endpoint's pattern, or "unmatched") and status code, and logs it
    /// (method, route, status, milliseconds) at Information, which only the JSON log format shows.
    /// </summary>
    static async Task CountRequests(HttpContext ctx, RequestDelegate next, ILogger requestLog)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try { await next(ctx); }
        finally
        {
            string route = (ctx.GetEndpoint() as Microsoft.AspNetCore.Routing.RouteEndpoint)?.RoutePattern.RawText ?? ctx.GetEndpoint()?.DisplayName ?? "unmatched";
            ServeMetrics.Request(route, ctx.Response.StatusCode);
            requestLog.LogInformation("{Method} {Route} {Status} {Milliseconds}", ctx.Request.Method, route, ctx.Response.StatusCode, Math.Round(clock.Elapsed.TotalMilliseconds, 1));
        }
    }

    static Func<HttpContext, RequestDelegate, Task> Authenticate(string token)
    {
        byte[] expected = Encoding.UTF8.GetBytes("Bearer " + token);
        return async (ctx, next) =>
        {
            if (ctx.Request.Path.StartsWithSegments("/grpc.health.v1.Health") || ctx.Request.Path == "/health" || ctx.Request.Path == "/ready" || ctx.Request.Path == "/metrics" ||
                CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(ctx.Request.Headers.Authorization.ToString()), expected))
            {
                await next(ctx);
                return;
            }
            const string message = "Missing or wrong bearer token: send 'Authorization: Bearer <the token in the server's --token-file>'.";
            if (ctx.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) == true)
            {
                ctx.Response.StatusCode = 200;   // a trailers-only gRPC response: UNAUTHENTICATED
                ctx.Response.ContentType = "application/grpc";
                ctx.Response.Headers["grpc-status"] = "16";
                ctx.Response.Headers["grpc-message"] = Uri.EscapeDataString(message);
                return;
            }
            await HttpErrors.Write(ctx, StatusCodes.Status401Unauthorized, message, "authentication_error");
        };
    }
}
