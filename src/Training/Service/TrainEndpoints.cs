using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Rlhf.Inference.Serving;
using Rlhf.Training.Common;

namespace Rlhf.Training.Service;

/// <summary>
/// The training server's HTTP/JSON API: <c>/v1/runs</c> (submit, list), <c>/v1/runs/{id}</c> (status),
/// <c>/metrics</c> (all rows, or server-sent events with <c>?follow=true</c>), <c>/cancel</c>, <c>/resume</c>,
/// <c>/artifacts</c> (list) and <c>/artifacts/{path}</c> (a file of the run's output folder).
/// Errors use the inference server's error object <c>{"error": {"message", ...}}</c>.
/// </summary>
public static class TrainEndpoints
{
    /// <summary>Largest request body (a submitted config) in bytes.</summary>
    public const int MaxBodyBytes = 1 << 20;

    /// <summary>Maps the endpoints onto <paramref name="app"/>.</summary>
    public static void Map(IEndpointRouteBuilder app, TrainRuns runs)
    {
        app.MapPost("/v1/runs", (Func<HttpContext, Task>)(ctx => Guard(ctx, async () =>
        {
            var body = await ReadBody(ctx);
            var run = runs.Submit(body["stage"] is JsonValue s && s.TryGetValue<string>(out var name) ? name : null, body["config"]);
            ctx.Response.StatusCode = StatusCodes.Status201Created;
            await WriteJson(ctx, new JsonObject { ["id"] = run.Id, ["status"] = "queued" });
        }))).WithSummary("Submit a run").WithDescription("Body {\"stage\": \"sft|rm|ppo|dpo|pipeline\", \"config\": {...}} (the JSON a --config file holds); 201 {\"id\", \"status\": \"queued\"}.")
            .Accepts<JsonObject>("application/json").Produces<JsonObject>(StatusCodes.Status201Created).Produces<JsonObject>(StatusCodes.Status400BadRequest);
        app.MapGet("/v1/runs", (Func<HttpContext, Task>)(ctx => Guard(ctx, () =>
            WriteJson(ctx, new JsonObject { ["runs"] = new JsonArray([.. runs.List().Select(r => (JsonNode)View(runs, r, summary: false))]) }))))
            .WithSummary("List the runs").Produces<JsonObject>();
        app.MapGet("/v1/runs/{id}", (HttpContext ctx, string id) => Guard(ctx, () => WriteJson(ctx, View(runs, Find(runs, id), summary: true))))
            .WithSummary("A run's status (with its summary.json once finished)").Produces<JsonObject>().Produces<JsonObject>(StatusCodes.Status404NotFound);
        app.MapPost("/v1/runs/{id}/cancel", (HttpContext ctx, string id) => Guard(ctx, () =>
            WriteJson(ctx, View(runs, runs.Cancel(id) ?? throw NotFound(id), summary: false))))
            .WithSummary("Stop a run at its next step boundary (its checkpoint is kept)").Produces<JsonObject>();
        app.MapPost("/v1/runs/{id}/resume", (HttpContext ctx, string id) => Guard(ctx, () =>
            WriteJson(ctx, View(runs, runs.Resume(id) ?? throw NotFound(id), summary: false))))
            .WithSummary("Resume a cancelled or failed run from its checkpoint").Produces<JsonObject>();
        app.MapGet("/v1/runs/{id}/metrics", (HttpContext ctx, string id) => Guard(ctx, async () =>
        {
            Find(runs, id);
            if (ctx.Request.Query["follow"] is [var f] && f is "true" or "1") await Follow(ctx, runs, id);
            else await WriteJson(ctx, new JsonObject { ["rows"] = new JsonArray([.. runs.Metrics(id)]) });
        })).WithSummary("The run's metrics rows; ?follow=true streams them as server-sent events (id: row number; Last-Event-ID resumes)")
            .Produces<JsonObject>().Produces(StatusCodes.Status200OK, contentType: "text/event-stream");
        app.MapGet("/v1/runs/{id}/artifacts", (HttpContext ctx, string id) => Guard(ctx, () =>
        {
            Find(runs, id);
            string root = runs.OutDir(id);
            var files = Directory.Exists(root)
                ? Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint })
                    .Select(f => new FileInfo(f)).OrderBy(f => f.FullName, StringComparer.Ordinal)
                    .Select(f => (JsonNode)new JsonObject { ["path"] = Path.GetRelativePath(root, f.FullName).Replace('\\', '/'), ["bytes"] = f.Length })
                : [];
            return WriteJson(ctx, new JsonObject { ["files"] = new JsonArray([.. files]) });
        })).WithSummary("The run's output files (path, bytes)").Produces<JsonObject>();
        app.MapGet("/v1/runs/{id}/artifacts/{**path}", (HttpContext ctx, string id, string path) => Guard(ctx, async () =>
        {
            Find(runs, id);
            string file = ArtifactFile(runs.OutDir(id), path);
            ctx.Response.ContentType = file.EndsWith(".json", StringComparison.Ordinal) ? "application/json"
                : file.EndsWith(".csv", StringComparison.Ordinal) || file.EndsWith(".md", StringComparison.Ordinal) || file.EndsWith(".txt", StringComparison.Ordinal) ? "text/plain; charset=utf-8"
                : file.EndsWith(".png", StringComparison.Ordinal) ? "image/png" : "application/octet-stream";
            ctx.Response.ContentLength = new FileInfo(file).Length;
            await ctx.Response.SendFileAsync(file, ctx.RequestAborted);
        })).WithSummary("Download one output file (paths stay inside the run's folder)").Produces(StatusCodes.Status200OK, contentType: "application/octet-stream");
    }

    /// <summary>
    /// The file <paramref name="path"/> names inside <paramref name="root"/>: a path that climbs out (<c>..</c>, also
    /// percent-encoded), an absolute path, or a link leading outside is a 400; a missing file a 404.
    /// </summary>
    internal static string ArtifactFile(string root, string path)
    {
        string decoded = Uri.UnescapeDataString(path);   // route values keep %2F; decode once more so no encoded form slips by
        if (decoded.Length == 0 || Path.IsPathRooted(decoded) || decoded.Contains('\\') ||
            decoded.Split('/').Any(part => part is ".." or "."))
            throw new HttpError(400, $"Artifact path '{Clip(path)}' must be relative to the run's output folder, without '..' or '.' parts.");
        string? file = Confined.Resolve(root, decoded);
        if (file is null) throw new HttpError(400, $"Artifact path '{Clip(path)}' leads outside the run's output folder.");
        if (!File.Exists(file)) throw new HttpError(404, $"No artifact '{Clip(path)}' in this run (GET /v1/runs/{{id}}/artifacts lists them).", "not_found_error");
        return file;
    }

    /// <summary>
    /// The metrics rows as server-sent events: <c>id: n</c> (the row's 1-based number), <c>event: metrics</c>, the row;
    /// then <c>event: end</c> with the final status. A client that reconnects with <c>Last-Event-ID: n</c> (what
    /// browsers' EventSource sends) gets the rows after row n instead of every row again.
    /// </summary>
    static async Task Follow(HttpContext ctx, TrainRuns runs, string id)
    {
        int sent = 0;
        if (ctx.Request.Headers["Last-Event-ID"] is [var last] &&
            !(int.TryParse(last, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out sent) && sent >= 0))
            throw new HttpError(400, $"Last-Event-ID must be a row number (a non-negative integer); got '{Clip(last ?? "")}'.");
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        while (!ctx.RequestAborted.IsCancellationRequested)
        {
            var change = runs.NextChange();
            var run = runs.Get(id)!;
            foreach (var row in runs.Metrics(id, sent))
            {
                sent++;
                await ctx.Response.WriteAsync($"id: {sent}\nevent: metrics\ndata: {row.ToJsonString()}\n\n", ctx.RequestAborted);
            }
            if (run.IsFinal)
            {
                await ctx.Response.WriteAsync($"event: end\ndata: {new JsonObject { ["status"] = Status(run.Status) }.ToJsonString()}\n\n", ctx.RequestAborted);
                return;
            }
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
            await change.WaitAsync(TimeSpan.FromSeconds(15), ctx.RequestAborted).ContinueWith(_ => { }, TaskScheduler.Default);
            if (!change.IsCompleted) await ctx.Response.WriteAsync(": keep-alive\n\n", ctx.RequestAborted);
        }
    }

    /// <summary>A run as the API shows it (with its summary.json when done and <paramref name="summary"/>).</summary>
    static JsonObject View(TrainRuns runs, RunRecord r, bool summary)
    {
        var o = new JsonObject
        {
            ["id"] = r.Id, ["stage"] = r.Stage, ["status"] = Status(r.Status),
            ["current_stage"] = r.CurrentStage, ["step"] = r.Step, ["total"] = r.Total,
            ["cancel_requested"] = r.CancelRequested, ["error"] = r.Error, ["attempts"] = r.Attempts,
            ["created"] = r.Created, ["started"] = r.Started, ["finished"] = r.Finished,
        };
        if (summary)
        {
            o["config"] = r.Config.DeepClone();
            o["summary"] = r.Status == RunStatus.Succeeded ? runs.Summary(r.Id) : null;
        }
        return o;
    }

    static string Status(RunStatus s) => s.ToString().ToLowerInvariant();

    static RunRecord Find(TrainRuns runs, string id) => runs.Get(id) ?? throw NotFound(id);

    static HttpError NotFound(string id) => new(404, $"No run '{Clip(id)}' (GET /v1/runs lists them).", "not_found_error");

    static async Task<JsonObject> ReadBody(HttpContext ctx)
    {
        if (ctx.Request.ContentLength > MaxBodyBytes) throw new HttpError(413, $"Request body over {MaxBodyBytes} bytes.");
        var limit = ctx.Features.Get<IHttpMaxRequestBodySizeFeature>();
        if (limit is { IsReadOnly: false }) limit.MaxRequestBodySize = MaxBodyBytes;
        using var buffer = new MemoryStream();
        await ctx.Request.Body.CopyToAsync(buffer, ctx.RequestAborted);
        try
        {
            return JsonNode.Parse(buffer.ToArray(), documentOptions: new JsonDocumentOptions { MaxDepth = 32 }) as JsonObject
                ?? throw new HttpError(400, "The body must be a JSON object: {\"stage\": \"sft\", \"config\": {...}}.");
        }
        catch (JsonException e) { throw new HttpError(400, "Malformed JSON body: " + e.Message); }
    }

    static Task WriteJson(HttpContext ctx, JsonObject body)
    {
        ctx.Response.ContentType = "application/json";
        return ctx.Response.WriteAsync(body.ToJsonString(ConfigLoader.Json), Encoding.UTF8, ctx.RequestAborted);
    }

    static async Task Guard(HttpContext ctx, Func<Task> body)
    {
        try { await body(); }
        catch (HttpError e) { await HttpErrors.Write(ctx, e.Status, e.Message, e.Type); }
        catch (RunRequestException e) { await HttpErrors.Write(ctx, 400, e.Message); }
        catch (BadHttpRequestException e) { await HttpErrors.Write(ctx, e.StatusCode, e.Message); }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested) { }
        catch (Exception e) when (!ctx.Response.HasStarted) { await HttpErrors.Write(ctx, 500, "internal error: " + e.Message, "server_error"); }
    }

    static string Clip(string s) => s.Length <= 80 ? s : s[..80] + "…";

    sealed class HttpError(int status, string message, string type = "invalid_request_error") : Exception(message)
    {
        public int Status { get; } = status;
        public string Type { get; } = type;
    }
}
