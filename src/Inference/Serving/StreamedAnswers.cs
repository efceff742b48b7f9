using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.AspNetCore.Http;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Serving;

/// <summary>
/// <c>stream: true</c> for <c>/v1/completions</c> and <c>/v1/chat/completions</c>: server-sent events in OpenAI's chunk
/// format, each token's text sent as the engine samples it (<see cref="RolloutCall.OnToken"/>), then one chunk per choice
/// with its <c>finish_reason</c>, an optional usage chunk (<c>stream_options.include_usage</c>) and <c>data: [DONE]</c>.
/// The concatenated deltas of a choice equal its unstreamed text. A client that disconnects cancels the generation.
/// </summary>
static class StreamedAnswers
{
    /// <summary>
    /// The text of one streamed choice so far. A delta is released only when it is final: never the start of a multi-byte
    /// character (decoded as U+FFFD until its last byte arrives), and never the last <c>holdBack</c> characters while a
    /// stop string could still end there (the stop string and what follows it are cut from the answer).
    /// </summary>
    internal sealed class ChoiceText(int holdBack)
    {
        readonly List<int> _ids = [];
        string _sent = "";

        /// <summary>Adds a sampled token; returns the text that can be sent now (possibly empty).</summary>
        public string Add(int token, TextTokenizer tokenizer)
        {
            _ids.Add(token);
            string text = PromptFormat.ResponseText(tokenizer, _ids);
            int end = text.Length;
            while (end > 0 && text[end - 1] == '\uFFFD') end--;
            end = Math.Max(0, end - holdBack);
            if (end <= _sent.Length || !text.StartsWith(_sent, StringComparison.Ordinal)) return "";
            string delta = text[_sent.Length..end];
            _sent = text[..end];
            return delta;
        }

        /// <summary>What remains of the final text <paramref name="final"/> after what was sent.</summary>
        public string Finish(string? final) =>
            final is not null && final.StartsWith(_sent, StringComparison.Ordinal) ? final[_sent.Length..] : "";
    }

    /// <summary>
    /// Generates <paramref name="requests"/> (choice k = request k) and streams the answer; with <paramref name="logprobs"/>
    /// each chunk carries the logprobs of the tokens whose text it releases (the rest come with the choice's last chunk).
    /// </summary>
    public static async Task Write(HttpContext ctx, RolloutReplica replica, IReadOnlyList<RolloutRequest> requests, int n, bool chat, bool includeUsage, bool logprobs = false)
    {
        var tokens = Channel.CreateUnbounded<SampledToken>(new UnboundedChannelOptions { SingleReader = true });
        var texts = requests.Select(r => new ChoiceText(Math.Max(0, (r.Sampling?.StopStrings ?? []).Select(s => s.Length).DefaultIfEmpty(0).Max() - 1))).ToArray();
        var pending = requests.Select(_ => new List<SampledToken>()).ToArray();   // tokens whose logprobs no chunk carried yet
        var offsets = new int[requests.Count];                                    // text offset of the next legacy logprob entry
        var reported = new bool[requests.Count];                                  // the engine reported tokens of this choice
        var call = new RolloutCall { OnToken = e => tokens.Writer.TryWrite(e) };
        var generation = replica.GenerateAsync(requests, call, ctx.RequestAborted);
        _ = generation.ContinueWith(_ => tokens.Writer.TryComplete(), TaskScheduler.Default);

        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        bool started = false;
        async Task Send(JsonNode data)
        {
            if (!started)
            {
                // headers go out with the first event: a request refused before its first token still gets a JSON 400
                ctx.Response.ContentType = "text/event-stream";
                ctx.Response.Headers.CacheControl = "no-cache";
                started = true;
                if (chat)
                    for (int k = 0; k < requests.Count; k++)
                        await Event(Chunk(k, new JsonObject { ["role"] = "assistant", ["content"] = "" }, null));
            }
            await Event(data);
        }
        async Task Event(JsonNode data)
        {
            await ctx.Response.WriteAsync("data: " + data.ToJsonString() + "\n\n", ctx.RequestAborted);
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
        }
        JsonObject Chunk(int k, JsonNode? delta, string? finish, ulong version = 0, JsonNode? lp = null) => new()
        {
            ["id"] = id, ["object"] = chat ? "chat.completion.chunk" : "text_completion", ["created"] = created, ["model"] = replica.ModelName,
            ["system_fingerprint"] = $"weights-v{version}",
            ["choices"] = new JsonArray(chat
                ? new JsonObject { ["index"] = k, ["delta"] = delta, ["logprobs"] = lp, ["finish_reason"] = finish }
                : new JsonObject { ["index"] = k, ["text"] = (string?)delta ?? "", ["logprobs"] = lp, ["finish_reason"] = finish }),
        };
        // the logprobs of choice k's pending tokens (null without logprobs or when none wait), then none wait
        JsonNode? TakeLogProbs(int k)
        {
            if (!logprobs || pending[k].Count == 0) return null;
            JsonNode lp = chat ? OpenAiEndpoints.ChatLogProbs(pending[k], replica) : OpenAiEndpoints.LegacyLogProbs(pending[k], replica, ref offsets[k]);
            pending[k].Clear();
            return lp;
        }
        JsonNode Delta(string text) => chat ? new JsonObject { ["content"] = text } : JsonValue.Create(text);

        ulong loaded = replica.Engine.WeightsVersion;
        await foreach (var e in tokens.Reader.ReadAllAsync(ctx.RequestAborted))
        {
            int k = e.Request;
            reported[k] = true;
            pending[k].Add(e);
            if (replica.Tokenizer is { } tokenizer)
            {
                if (texts[k].Add(e.Token, tokenizer) is { Length: > 0 } delta) await Send(Chunk(k, Delta(delta), null, loaded, TakeLogProbs(k)));
            }
            else
            {
                // ids in, ids out: a folder without a tokenizer streams each token's id (the text stays empty)
                var chunk = Chunk(k, Delta(""), null, loaded, TakeLogProbs(k));
                chunk["choices"]![0]!["token_ids"] = new JsonArray(e.Token);
                await Send(chunk);
            }
        }

        IReadOnlyList<RolloutResult> results;
        try { results = await generation; }
        catch (Exception e) when (started && e is not OperationCanceledException)
        {
            await Event(new JsonObject { ["error"] = new JsonObject { ["message"] = e.Message, ["type"] = "server_error" } });
            return;
        }
        for (int k = 0; k < results.Count; k++)
        {
            var r = results[k];
            string rest = texts[k].Finish(r.Text);
            string finish = r.FinishReason == RolloutFinishReason.Length ? "length" : "stop";
            if (logprobs && !reported[k])
                pending[k].AddRange(r.ResponseIds.Select((t, i) => new SampledToken(k, t, r.LogProbs[i], r.TopLogProbs?[i])));   // an engine that reported no tokens
            if (rest.Length > 0) await Send(Chunk(k, Delta(rest), null, r.WeightsVersion, TakeLogProbs(k)));
            await Send(Chunk(k, chat ? new JsonObject() : JsonValue.Create(""), finish, r.WeightsVersion, TakeLogProbs(k)));
        }
        if (includeUsage)
        {
            long promptTokens = results.Where((_, k) => k % n == 0).Sum(r => (long)r.PromptIds.Length);
            long completionTokens = results.Sum(r => (long)r.ResponseIds.Length);
            var usage = Chunk(0, null, null, results.Count > 0 ? results[0].WeightsVersion : loaded);
            usage["choices"] = new JsonArray();
            usage["usage"] = new JsonObject { ["prompt_tokens"] = promptTokens, ["completion_tokens"] = completionTokens, ["total_tokens"] = promptTokens + completionTokens };
            await Send(usage);
        }
        await ctx.Response.WriteAsync("data: [DONE]\n\n", ctx.RequestAborted);
    }
}
