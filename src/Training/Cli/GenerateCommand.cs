using System.CommandLine;
using Rlhf.Export;
using Rlhf.Inference.Services;
using Rlhf.Training.OnnxExport;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;
using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Cli;

/// <summary>Sampling settings of <c>rlhf generate</c>, shared by both engines.</summary>
internal sealed record GenerateSettings(int MaxNewTokens = 64, double Temperature = 0.7, int TopK = 0, double TopP = 1.0, long Seed = 1, int Threads = 0);

/// <summary>
/// <c>rlhf generate</c>: sample continuations with the TorchSharp model (<c>--engine torch</c>, KV-cached eager) or the
/// ONNX Runtime rollout engine (<c>--engine ort</c>; an HF folder is exported to a temporary ONNX folder first, an ONNX
/// folder is used as is). Greedy outputs of both engines are identical on the same weights.
/// </summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "HF model folder (config.json, model.safetensors, tokenizer files), or an ONNX folder (model.onnx; genai_config.json for genai) for --engine ort or genai.", Required = true };
        var prompt = new Option<string[]>("--prompt") { Description = "A prompt (repeatable)." };
        var prompts = new Option<string?>("--prompts") { Description = "CSV/JSONL/Parquet file with a prompt column: strings, or (JSONL/Parquet) lists of messages rendered with the model's chat template." };
        var chat = new Option<bool>("--chat") { Description = "Send each --prompt as a user message through the model's chat template (with the generation prompt) and print the assistant's reply." };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate per prompt.", DefaultValueFactory = _ => 64 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature (0 = greedy).", DefaultValueFactory = _ => 0.7 };
        var topK = new Option<int>("--top-k") { Description = "Keep the k most likely tokens (0 = off).", DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass (1 = off).", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { Description = "Sampling seed.", DefaultValueFactory = _ => 1 };
        var gold = new Option<bool>("--gold") { Description = "Also print the default task's gold score of each response." };
        var device = new Option<string>("--device") { Description = "cpu or cuda (torch engine).", DefaultValueFactory = _ => "cpu" };
        var engine = new Option<string>("--engine") { Description = "torch (TorchSharp eager, KV cache), ort (our ONNX Runtime rollout engine) or genai (ONNX Runtime GenAI; its per-chunk seed makes sampled tokens depend on the batch, see docs/onnx-and-engines.md).", DefaultValueFactory = _ => "torch" };
        var threads = new Option<int>("--threads") { Description = "Intra-op threads (0 = all cores).", DefaultValueFactory = _ => 0 };
        var cmd = new Command("generate", "Sample continuations of prompts from a model folder.")
        {
            model, prompt, prompts, chat, maxNew, temperature, topK, topP, seed, gold, device, engine, threads,
        };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            string folder = r.GetValue(model)!;
            bool asChat = r.GetValue(chat);
            var records = (r.GetValue(prompt) ?? []).Select(p => asChat ? PromptExample.FromConversation([new ChatMessage("user", p)]) : new PromptExample(p)).ToList();
            string source = "--prompt --chat";
            if (r.GetValue(prompts) is string file) { records.AddRange(DataFiles.ReadPrompts(file).Records); source = file; }
            if (records.Count == 0) throw new ArgumentException("Give at least one --prompt or a --prompts file.");
            List<string> texts;
            using (var template = ChatText.TemplateFor(records, folder, source))
                texts = [.. records.Select(p => ChatText.PromptText(p, template))];
            var settings = new GenerateSettings(r.GetValue(maxNew), r.GetValue(temperature), r.GetValue(topK), r.GetValue(topP), r.GetValue(seed), r.GetValue(threads));
            var outputs = Run(folder, r.GetValue(engine)!, texts, settings, r.GetValue(device)!);
            for (int i = 0; i < texts.Count; i++)
            {
                // a conversation prints the assistant's reply alone (its prompt is template markup); plain text prints prompt + continuation
                string line = records[i].IsConversational ? outputs[i].Response : PromptFormat.Join(texts[i], outputs[i].Response);
                if (r.GetValue(gold))
                    line += $"\t[gold {GoldScorer.Score(texts[i], outputs[i].Response, outputs[i].Eos).Total:F2}]";
                Console.WriteLine(line);
            }
            return 0;
        }));
        return cmd;
    }

    /// <summary>Responses (text, ended with EOS) of <paramref name="texts"/> with the chosen engine.</summary>
    public static IReadOnlyList<(string Response, int[] Ids, bool Eos)> Run(string folder, string engine, IReadOnlyList<string> texts,
        GenerateSettings s, string device = "cpu")
    {
        DeviceSelector.SetThreads(s.Threads);
        switch (engine)
        {
            case "torch":
            {
                var dev = DeviceSelector.Resolve(DeviceSelector.Parse(device));
                var tokenizer = TextTokenizer.Load(folder);
                using var lm = LlamaForCausalLM.FromPretrained(folder, dev, ScalarType.Float32);
                var options = new GenerationOptions
                {
                    MaxNewTokens = s.MaxNewTokens, Temperature = s.Temperature, TopK = s.TopK, TopP = s.TopP, Seed = s.Seed,
                    EosTokenIds = Generation.StopIds(lm.Config, tokenizer), PadTokenId = tokenizer.PadId ?? 0,
                };
                var ids = texts.Select(t => PromptFormat.PromptIds(tokenizer, t).Select(x => (long)x).ToArray()).ToList();
                return [.. Generation.Generate(lm, ids, options).Select(o =>
                    (PromptFormat.ResponseText(tokenizer, o.Tokens.Select(t => (int)t)), o.Tokens.Select(t => (int)t).ToArray(), o.FinishReason == FinishReason.Stop))];
            }
            case "ort":
            case "genai":
            {
                if (DeviceSelector.Parse(device) != ComputeDevice.Cpu)
                    throw new ArgumentException($"--engine {engine} runs on the CPU (this build has the CPU ONNX Runtime); drop --device.");
                var tokenizer = TextTokenizer.Load(folder);
                string? temp = null;
                IReadOnlyList<int>? eos = null;
                try
                {
                    string onnx = folder;
                    if (!IsOnnxFolder(folder))
                    {
                        temp = Path.Combine(Path.GetTempPath(), $"rlhf-generate-{Guid.NewGuid():N}");
                        using var lm = LlamaForCausalLM.FromPretrained(folder, CPU, ScalarType.Float32);
                        ExportStage.ExportPolicy(lm, temp, ExportStage.DefaultGraph(lm.Config),
                            new ExportOptions { TokenizerFolder = folder, Stage = "generate" }, parity: false);
                        eos = Generation.StopIds(lm.Config, tokenizer);
                        onnx = temp;
                    }
                    using IRolloutService rollout = engine == "ort"
                        ? RolloutEngine.Load(onnx, new RolloutEngineOptions { Threads = s.Threads, EosTokenIds = eos, PadTokenId = tokenizer.PadId ?? 0 }, tokenizer)
                        : GenAiRolloutEngine.Load(onnx, new GenAiEngineOptions { Threads = s.Threads }, tokenizer);   // EOS: genai_config.json
                    var sampling = new SamplingOptions
                    {
                        Temperature = (float)s.Temperature, TopK = s.TopK, TopP = (float)s.TopP, MaxNewTokens = s.MaxNewTokens, Seed = (ulong)s.Seed,
                    };
                    var results = rollout.Generate([.. texts.Select((t, i) => RolloutRequest.FromText(t, sampling with { Seed = (ulong)s.Seed + (ulong)i }))]);
                    return [.. results.Select(x => (x.Text ?? "", x.ResponseIds, x.FinishReason == RolloutFinishReason.Eos))];
                }
                finally
                {
                    if (temp is not null) try { Directory.Delete(temp, true); } catch (IOException) { }
                }
            }
            default:
                throw new ArgumentException($"--engine {engine} is not known; use torch, ort or genai.");
        }
    }

    /// <summary>True for a folder holding an exported ONNX decoder rather than HF safetensors.</summary>
    public static bool IsOnnxFolder(string folder) =>
        File.Exists(Path.Combine(folder, "genai_config.json")) || File.Exists(Path.Combine(folder, "model.onnx")) || folder.EndsWith(".onnx", StringComparison.Ordinal);
}
