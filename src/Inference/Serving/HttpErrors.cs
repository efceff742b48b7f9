using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Rlhf.Inference.Serving;

/// <summary>Errors in OpenAI's error-object shape: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
public static class HttpErrors
{
    /// <summary>Writes the error object with <paramref name="status"/>.</summary>
    public static Task Write(HttpContext ctx, int status, string message, string type = "invalid_request_error", string? param = null)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        return ctx.Response.WriteAsync(JsonSerializer.Serialize(new { error = new { message, type, param, code = (string?)null } }));
    }

    /// <summary>Runs <paramref name="body"/>; a bad request becomes a 400 with its message, anything else a 500.</summary>
    internal static async Task Guard(HttpContext ctx, Func<Task> body)
    {
        try { await body(); }
        catch (BadRequest e) { await Write(ctx, 400, e.Message, param: e.Param); }
        catch (JsonException e) { await Write(ctx, 400, "Malformed JSON body: " + e.Message); }
        // System.Text.Json checks UTF-8 inside strings only when it reads them: invalid bytes there are the client's
        catch (InvalidOperationException e) when (e.TargetSite?.Module.Assembly == typeof(JsonElement).Assembly) { await Write(ctx, 400, "Malformed JSON body: " + e.Message); }
        catch (ArgumentException e) { await Write(ctx, 400, e.Message); }
        catch (Services.WeightsVersionMismatchException e) { await Write(ctx, 409, e.Message, "conflict_error"); }
        catch (QueueFullException e)
        {
            ctx.Response.Headers.RetryAfter = "1";
            await Write(ctx, 429, e.Message, "rate_limit_error");
        }
        catch (TimeoutException e) { await Write(ctx, 504, e.Message, "timeout_error"); }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested) { }
        catch (Exception e) { await Write(ctx, 500, "internal error: " + e.Message, "server_error"); }
    }
}

/// <summary>A request the client must change; <see cref="Param"/> names the field.</summary>
sealed class BadRequest(string message, string? param = null) : Exception(message)
{
    public string? Param { get; } = param;
}
