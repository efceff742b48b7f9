using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Serving;

/// <summary>
/// OpenAI-compatible HTTP of a rollout replica: <c>GET /v1/models</c>, <c>POST /v1/chat/completions</c> (folders with a
/// chat template) and <c>POST /v1/completions</c> (prompt as a
/// string, strings, token ids or lists of token ids; <c>max_tokens</c>, <c>temperature</c>, <c>top_p</c>, <c>top_k</c>,
/// <c>n</c>, <c>seed</c>, <c>stop</c>, <c>logprobs</c>). Choice <c>i·n + j</c> (prompt i, sample j) samples with seed
/// <c>seed + i·n + j</c>, so a seeded request gives the same tokens however it is batched.
/// </summary>
static class OpenAiEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/v1/models", (HttpContext ctx) =>
        {
            var r = ctx.RequestServices.GetRequiredService<RolloutReplica>();
            return Results.Json(new { @object = "list", data = new[] { new { id = r.ModelName, @object = "model", created = 0L, owned_by = "rlhf" } } });
        });
        app.MapPost("/v1/completions", (HttpContext ctx) => HttpErrors.Guard(ctx, () => Completions(ctx, ctx.RequestServices.GetRequiredService<RolloutReplica>())));
        app.MapPost("/v1/chat/completions", (HttpContext ctx) => HttpErrors.Guard(ctx, () => ChatCompletions(ctx, ctx.RequestServices.GetRequiredService<RolloutReplica>())));
    }

    static async Task Completions(HttpContext ctx, RolloutReplica replica)
    {
        using var doc = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
        var body = Body(doc, replica);
        int? logprobs = Json.Int(body, "logprobs");
        if (logprobs is < 0) throw new BadRequest($"'logprobs' must be >= 0; got {logprobs}.", "logprobs");
        var prompts = Prompts(body, replica);
        var (requests, n) = Requests(replica, body, prompts, Json.Int(body, "max_tokens") ?? 16, "max_tokens", logprobs ?? 0);
        if (Streamed(body) is { } usage)
        {
            await StreamedAnswers.Write(ctx, replica, requests, n, chat: false, usage, logprobs is not null);
            return;
        }
        var results = await replica.GenerateAsync(requests, new RolloutCall(), ctx.RequestAborted);

        var choices = new JsonArray();
        for (int k = 0; k < results.Count; k++)
        {
            var r = results[k];
            choices.Add(new JsonObject
            {
                ["index"] = k,
                ["text"] = r.Text ?? "",
                ["logprobs"] = logprobs is null ? null : LogProbs(r, replica),
                ["finish_reason"] = Finish(r),
            });
        }
        await Answer(ctx, replica, "cmpl-", "text_completion", results, n, choices);
    }

    /// <summary>
    /// <c>POST /v1/chat/completions</c>: the messages (and <c>tools</c>, when given) rendered by the folder's chat template
    /// with the generation prompt, as transformers renders it, encoded as they are (special-token text to its ids, no BOS
    /// added: the template places its own), then sampled as a completion; choice j samples with seed <c>seed + j</c>.
    /// </summary>
    static async Task ChatCompletions(HttpContext ctx, RolloutReplica replica)
    {
        using var doc = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
        var body = Body(doc, replica);
        var tokenizer = replica.Tokenizer ?? throw new BadRequest("This model folder has no tokenizer files, so it cannot take chat messages; use POST /v1/completions with token ids.");
        var template = replica.Chat ?? throw new BadRequest(replica.ChatProblem ??
            "This model folder has no chat template (tokenizer_config.json 'chat_template' or chat_template.jinja); use POST /v1/completions.", "messages");
        bool logprobs = body.TryGetProperty("logprobs", out var lp) && lp.ValueKind == JsonValueKind.True;
        int topLogprobs = Json.Int(body, "top_logprobs") ?? 0;
        if (topLogprobs != 0 && !logprobs) throw new BadRequest("'top_logprobs' needs 'logprobs': true.", "top_logprobs");
        string text;
        try { text = template.Render(Messages(body), addGenerationPrompt: true, Tools(body)); }
        catch (ChatTemplateException e) { throw new BadRequest(e.Message, "messages"); }
        int[] ids = PromptFormat.PromptIds(tokenizer, text);   // as every training stage encodes a rendered prompt
        if (ids.Length == 0) throw new BadRequest("The chat template rendered an empty prompt.", "messages");
        int maxTokens = Json.Int(body, "max_completion_tokens") ?? Json.Int(body, "max_tokens") ?? 16;
        var (requests, n) = Requests(replica, body, [RolloutRequest.FromIds(ids)], maxTokens, "max_completion_tokens", topLogprobs);
        if (Streamed(body) is { } usage)
        {
            await StreamedAnswers.Write(ctx, replica, requests, n, chat: true, usage, logprobs);
            return;
        }
        var results = await replica.GenerateAsync(requests, new RolloutCall(), ctx.RequestAborted);

        var choices = new JsonArray();
        for (int k = 0; k < results.Count; k++)
        {
            var r = results[k];
            choices.Add(new JsonObject
            {
                ["index"] = k,
                ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = r.Text ?? "" },
                ["logprobs"] = logprobs ? ChatLogProbs(r, replica) : null,
                ["finish_reason"] = Finish(r),
            });
        }
        await Answer(ctx, replica, "chatcmpl-", "chat.completion", results, n, choices);
    }

    /// <summary>The request body, checked for what every endpoint needs: a JSON object naming this server's model.</summary>
    static JsonElement Body(JsonDocument doc, RolloutReplica replica)
    {
        var body = doc.RootElement;
        if (body.ValueKind != JsonValueKind.Object) throw new BadRequest("The body must be a JSON object.");
        string model = Json.String(body, "model") ?? throw new BadRequest("'model' is required (GET /v1/models lists it).", "model");
        if (model != replica.ModelName) throw new BadRequest($"Unknown model '{model}'; this server serves '{replica.ModelName}'.", "model");
        return body;
    }

    /// <summary>Null when the answer is one JSON object; else whether the stream ends with a usage chunk (<c>stream_options.include_usage</c>).</summary>
    static bool? Streamed(JsonElement body)
    {
        if (!body.TryGetProperty("stream", out var stream) || stream.ValueKind is JsonValueKind.False or JsonValueKind.Null) return null;
        if (stream.ValueKind != JsonValueKind.True) throw new BadRequest("'stream' must be true or false.", "stream");
        if (!body.TryGetProperty("stream_options", out var o) || o.ValueKind == JsonValueKind.Null) return false;
        if (o.ValueKind != JsonValueKind.Object) throw new BadRequest("'stream_options' must be an object.", "stream_options");
        return o.TryGetProperty("include_usage", out var u) && u.ValueKind == JsonValueKind.True;
    }

    /// <summary>
    /// The requests for <c>n</c> sequences per prompt with the body's sampling settings; sequence <c>i·n + j</c> gets seed
    /// <c>seed + i·n + j</c> (a random base seed when none is given).
    /// </summary>
    static (IReadOnlyList<RolloutRequest> Requests, int N) Requests(RolloutReplica replica, JsonElement body,
        IReadOnlyList<RolloutRequest> prompts, int maxTokens, string maxTokensName, int topLogProbs)
    {
        if (maxTokens < 1) throw new BadRequest($"'{maxTokensName}' must be >= 1; got {maxTokens}.", maxTokensName);
        int n = Json.Int(body, "n") ?? 1;
        if (n < 1) throw new BadRequest($"'n' must be >= 1; got {n}.", "n");
        int topK = Json.Int(body, "top_k") ?? 0;
        if (topK == -1) topK = 0;   // vLLM's "off"
        long? seed = Json.Long(body, "seed");
        if (prompts.Count * (long)n > replica.MaxBatch)
            throw new BadRequest($"{prompts.Count} prompts × n = {n} is {prompts.Count * (long)n} sequences; this server takes at most {replica.MaxBatch} per request.", "n");
        ulong baseSeed = seed is { } s ? unchecked((ulong)s) : (ulong)Random.Shared.NextInt64();
        var sampling = new SamplingOptions
        {
            Temperature = Json.Float(body, "temperature") ?? 1f, TopP = Json.Float(body, "top_p") ?? 1f, TopK = topK, MaxNewTokens = maxTokens,
            StopStrings = Json.Strings(body, "stop"), TopLogProbs = topLogProbs,
        };
        try { sampling.Validate(); }
        catch (ArgumentException e) { throw new BadRequest(e.Message); }
        var requests = new List<RolloutRequest>(prompts.Count * n);
        for (int i = 0; i < prompts.Count; i++)
            for (int j = 0; j < n; j++)
                requests.Add(prompts[i] with { Sampling = sampling with { Seed = baseSeed + (ulong)(i * n + j) } });
        return (requests, n);
    }

    static string Finish(RolloutResult r) => r.FinishReason == RolloutFinishReason.Length ? "length" : "stop";

    /// <summary>Writes the answer: id, object, created, model, the weights version (also as <c>system_fingerprint</c>), choices, usage.</summary>
    static Task Answer(HttpContext ctx, RolloutReplica replica, string idPrefix, string kind, IReadOnlyList<RolloutResult> results, int n, JsonArray choices)
    {
        long promptTokens = results.Where((_, k) => k % n == 0).Sum(r => (long)r.PromptIds.Length);
        long completionTokens = results.Sum(r => (long)r.ResponseIds.Length);
        ulong version = results.Count > 0 ? results[0].WeightsVersion : replica.Engine.WeightsVersion;
        var response = new JsonObject
        {
            ["id"] = idPrefix + Guid.NewGuid().ToString("N"),
            ["object"] = kind,
            ["created"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            ["model"] = replica.ModelName,
            ["system_fingerprint"] = $"weights-v{version}",
            ["weights_version"] = version,
            ["choices"] = choices,
            ["usage"] = new JsonObject { ["prompt_tokens"] = promptTokens, ["completion_tokens"] = completionTokens, ["total_tokens"] = promptTokens + completionTokens },
        };
        ctx.Response.ContentType = "application/json";
        return ctx.Response.WriteAsync(response.ToJsonString(), ctx.RequestAborted);
    }

    /// <summary>The conversation: <c>messages</c> with a <c>role</c> and a <c>content</c> string (or text parts).</summary>
    static List<ChatMessage> Messages(JsonElement body)
    {
        if (!body.TryGetProperty("messages", out var m) || m.ValueKind != JsonValueKind.Array || m.GetArrayLength() == 0)
            throw new BadRequest("'messages' must be a non-empty array of {\"role\", \"content\"} objects.", "messages");
        var list = new List<ChatMessage>();
        foreach (var e in m.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Object) throw new BadRequest("Each message must be an object with 'role' and 'content'.", "messages");
            string role = Json.String(e, "role") ?? throw new BadRequest("A message lacks its 'role'.", "messages");
            string content = !e.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null ? ""
                : c.ValueKind == JsonValueKind.String ? c.GetString()!
                : c.ValueKind == JsonValueKind.Array ? string.Concat(c.EnumerateArray().Select(TextPart))
                : throw new BadRequest("A message's 'content' must be a string or an array of text parts.", "messages");
            list.Add(new ChatMessage(role, content));
        }
        return list;

        static string TextPart(JsonElement part) =>
            part.ValueKind == JsonValueKind.Object && Json.String(part, "type") == "text" && Json.String(part, "text") is { } t ? t
                : throw new BadRequest("Only text content parts ({\"type\": \"text\", \"text\": ...}) are supported.", "messages");
    }

    /// <summary>The request's <c>tools</c> array as JSON (what a template's <c>tools</c> holds); null when absent.</summary>
    static string? Tools(JsonElement body)
    {
        if (!body.TryGetProperty("tools", out var t) || t.ValueKind == JsonValueKind.Null) return null;
        return t.ValueKind == JsonValueKind.Array ? t.GetRawText() : throw new BadRequest("'tools' must be an array.", "tools");
    }

    /// <summary>Chat logprobs: per token its text, logprob and UTF-8 bytes; top_logprobs holds the chosen token only (the engine records no others).</summary>
    /// <summary>The steps of a finished result, as an engine reports them while it samples.</summary>
    static IReadOnlyList<SampledToken> Steps(RolloutResult r) =>
        [.. r.ResponseIds.Select((t, i) => new SampledToken(0, t, r.LogProbs[i], r.TopLogProbs?[i]))];

    static JsonObject ChatLogProbs(RolloutResult r, RolloutReplica replica) => ChatLogProbs(Steps(r), replica);

    static JsonObject LogProbs(RolloutResult r, RolloutReplica replica)
    {
        int offset = 0;
        return LegacyLogProbs(Steps(r), replica, ref offset);
    }

    /// <summary>
    /// Chat logprobs: each token with its logprob and bytes, and <c>top_logprobs</c>: the request's <c>top_logprobs</c>
    /// most likely tokens at that step (<see cref="RolloutResult.TopLogProbs"/>), or the chosen token alone when none were asked for.
    /// </summary>
    internal static JsonObject ChatLogProbs(IReadOnlyList<SampledToken> steps, RolloutReplica replica)
    {
        JsonObject Entry(int id, float lp)
        {
            string piece = Piece(id, replica);
            return new JsonObject
            {
                ["token"] = piece, ["logprob"] = lp, ["bytes"] = new JsonArray([.. System.Text.Encoding.UTF8.GetBytes(piece).Select(b => (JsonNode)JsonValue.Create((int)b))]),
            };
        }
        var content = new JsonArray();
        foreach (var step in steps)
        {
            var entry = Entry(step.Token, step.LogProb);
            entry["top_logprobs"] = step.Top is { } tops
                ? new JsonArray([.. tops.Select(x => (JsonNode)Entry(x.Token, x.LogProb))])
                : new JsonArray(Entry(step.Token, step.LogProb));
            content.Add(entry);
        }
        return new JsonObject { ["content"] = content };
    }

    internal static string Piece(int id, RolloutReplica replica) => replica.Tokenizer?.Decode([id], skipSpecial: false) ?? $"<{id}>";

    /// <summary>
    /// OpenAI's legacy logprobs object for <paramref name="steps"/> (text offsets from <paramref name="offset"/>, which
    /// moves past their text);
    /// <c>top_logprobs</c> maps the <c>logprobs</c> most likely tokens of each step to their logprobs (with
    /// <c>logprobs: 0</c>, or from an engine that records no alternatives, the chosen token alone).
    /// </summary>
    internal static JsonObject LegacyLogProbs(IReadOnlyList<SampledToken> steps, RolloutReplica replica, ref int offset)
    {
        var tokens = new JsonArray();
        var lps = new JsonArray();
        var tops = new JsonArray();
        var offsets = new JsonArray();
        foreach (var step in steps)
        {
            string piece = Piece(step.Token, replica);
            tokens.Add(piece);
            lps.Add(step.LogProb);
            var top = new JsonObject();
            if (step.Top is { } alternatives)
                foreach (var x in alternatives) top.TryAdd(Piece(x.Token, replica), x.LogProb);   // two ids that decode alike share a key: the likelier stays
            else top[piece] = step.LogProb;
            tops.Add(top);
            offsets.Add(offset);
            offset += piece.Length;
        }
        return new JsonObject { ["tokens"] = tokens, ["token_logprobs"] = lps, ["top_logprobs"] = tops, ["text_offset"] = offsets };
    }

    /// <summary>The prompts: a string, an array of strings, an array of token ids, or an array of arrays of token ids.</summary>
    static List<RolloutRequest> Prompts(JsonElement body, RolloutReplica replica)
    {
        if (!body.TryGetProperty("prompt", out var p)) throw new BadRequest("'prompt' is required.", "prompt");
        RolloutRequest Text(string s) => replica.Tokenizer is null
            ? throw new BadRequest("This model folder has no tokenizer files: send the prompt as token ids.", "prompt")
            : RolloutRequest.FromText(s);
        RolloutRequest Ids(JsonElement a)
        {
            var ids = new int[a.GetArrayLength()];
            int i = 0;
            foreach (var x in a.EnumerateArray())
            {
                if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt32(out ids[i++])) throw new BadRequest("Token ids must be integers.", "prompt");
            }
            if (ids.Length == 0) throw new BadRequest("A token-id prompt is empty.", "prompt");
            return RolloutRequest.FromIds(ids);
        }
        switch (p.ValueKind)
        {
            case JsonValueKind.String:
                return [Text(p.GetString()!)];
            case JsonValueKind.Array when p.GetArrayLength() == 0:
                throw new BadRequest("'prompt' is an empty array.", "prompt");
            case JsonValueKind.Array:
                var first = p[0];
                if (first.ValueKind == JsonValueKind.Number) return [Ids(p)];
                var list = new List<RolloutRequest>();
                foreach (var e in p.EnumerateArray())
                {
                    list.Add(e.ValueKind switch
                    {
                        JsonValueKind.String => Text(e.GetString()!),
                        JsonValueKind.Array => Ids(e),
                        _ => throw new BadRequest("'prompt' array items must be strings or arrays of token ids.", "prompt"),
                    });
                }
                return list;
            default:
                throw new BadRequest("'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token ids.", "prompt");
        }
    }
}

/// <summary>OpenRLHF's remote reward contract: <c>POST /get_reward</c> {"query": [...], "prompts": [...]} -> {"rewards": [...], "scores": [...]}.</summary>
static class RewardEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapPost("/get_reward", (HttpContext ctx) => HttpErrors.Guard(ctx, () => GetReward(ctx, ctx.RequestServices.GetRequiredService<RewardReplica>())));
        app.MapGet("/v1/models", (HttpContext ctx) =>
        {
            var r = ctx.RequestServices.GetRequiredService<RewardReplica>();
            return Results.Json(new { @object = "list", data = new[] { new { id = r.ModelName, @object = "model", created = 0L, owned_by = "rlhf" } } });
        });
    }

    /// <summary>
    /// Each query is prompt + response as one text; with <c>prompts</c> the query is split after its prompt (which must
    /// be its prefix; the space that joins them is dropped), without them each query is scored as one text (an empty
    /// prompt and the query as the response, as <c>rlhf score</c> scores a text with an empty prompt).
    /// </summary>
    static async Task GetReward(HttpContext ctx, RewardReplica replica)
    {
        using var doc = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
        var body = doc.RootElement;
        if (body.ValueKind != JsonValueKind.Object) throw new BadRequest("The body must be a JSON object with 'query' (and optionally 'prompts').");
        if (!body.TryGetProperty("query", out var q) || q.ValueKind != JsonValueKind.Array)
            throw new BadRequest("'query' must be an array of strings (prompt + response as one text).", "query");
        string[] queries = Json.StringArray(q, "query");
        string[]? prompts = null;
        if (body.TryGetProperty("prompts", out var p) && p.ValueKind != JsonValueKind.Null)
        {
            if (p.ValueKind != JsonValueKind.Array) throw new BadRequest("'prompts' must be an array of strings.", "prompts");
            prompts = Json.StringArray(p, "prompts");
            if (prompts.Length != queries.Length)
                throw new BadRequest($"'prompts' has {prompts.Length} items and 'query' {queries.Length}; give one prompt per query.", "prompts");
        }
        var requests = new RewardRequest[queries.Length];
        for (int i = 0; i < queries.Length; i++)
        {
            if (prompts is null) { requests[i] = new RewardRequest("", queries[i]); continue; }   // one text, as `rlhf score` with an empty prompt
            if (!queries[i].StartsWith(prompts[i], StringComparison.Ordinal))
                throw new BadRequest($"query[{i}] does not start with prompts[{i}]; each query must be its prompt followed by the response.", "prompts");
            requests[i] = new RewardRequest(prompts[i], queries[i][prompts[i].Length..].TrimStart());
        }
        float[] scores = await replica.ScoreAsync(requests, ctx.RequestAborted);
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(JsonSerializer.Serialize(new { rewards = scores, scores }), ctx.RequestAborted);
    }
}

/// <summary>Typed reads of optional JSON fields, with 400s that name the field.</summary>
static class Json
{
    static bool Present(JsonElement o, string name, out JsonElement v) =>
        o.TryGetProperty(name, out v) && v.ValueKind != JsonValueKind.Null;

    public static string? String(JsonElement o, string name) =>
        !Present(o, name, out var v) ? null : v.ValueKind == JsonValueKind.String ? v.GetString() : throw new BadRequest($"'{name}' must be a string.", name);

    public static int? Int(JsonElement o, string name) =>
        !Present(o, name, out var v) ? null : v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int x) ? x : throw new BadRequest($"'{name}' must be an integer.", name);

    public static long? Long(JsonElement o, string name) =>
        !Present(o, name, out var v) ? null : v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long x) ? x : throw new BadRequest($"'{name}' must be an integer.", name);

    public static float? Float(JsonElement o, string name) =>
        !Present(o, name, out var v) ? null : v.ValueKind == JsonValueKind.Number ? (float)v.GetDouble() : throw new BadRequest($"'{name}' must be a number.", name);

    /// <summary>A string or an array of strings (absent: none).</summary>
    public static string[] Strings(JsonElement o, string name) =>
        !Present(o, name, out var v) ? []
        : v.ValueKind == JsonValueKind.String ? [v.GetString()!]
        : v.ValueKind == JsonValueKind.Array ? StringArray(v, name)
        : throw new BadRequest($"'{name}' must be a string or an array of strings.", name);

    public static string[] StringArray(JsonElement a, string name) =>
        [.. a.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : throw new BadRequest($"'{name}' items must be strings.", name))];
}
