using System.CommandLine;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;
using Rlhf.Training.Engines;

namespace Rlhf.Training.Cli;

/// <summary>
/// <c>rlhf generate</c>: sample continuations with any <see cref="RolloutEngineKind"/>: the TorchSharp model
/// (<c>--engine torch</c>, KV-cached eager) or an ONNX engine (<c>--engine ort|genai</c>; an HF folder is exported to a
/// temporary ONNX folder first, an ONNX folder is used as is). Greedy outputs of the engines are identical on the same weights.
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
        var engine = new Option<string>("--engine") { Description = "torch (TorchSharp eager, KV cache), ort (our ONNX Runtime rollout engine) or genai (ONNX Runtime GenAI; its per-chunk seed makes sampled tokens depend on the batch, see docs/onnx-and-engines.md).", DefaultValueFactory = _ => RolloutEngines.Name(RolloutEngineKind.Torch) };
        engine.AcceptOnlyFromAmong([.. RolloutEngines.Names]);
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
            var sampling = new SamplingOptions
            {
                MaxNewTokens = r.GetValue(maxNew), Temperature = (float)r.GetValue(temperature), TopK = r.GetValue(topK), TopP = (float)r.GetValue(topP), Seed = (ulong)r.GetValue(seed),
            };
            var outputs = Run(folder, RolloutEngines.Parse(r.GetValue(engine)!), texts, sampling, r.GetValue(threads), DeviceSelector.Parse(r.GetValue(device)!));
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

    /// <summary>
    /// Responses (text, ids, ended with EOS) of <paramref name="texts"/> from the <paramref name="engine"/> the factory opens
    /// (<see cref="PolicyRollouts.ForFolder"/>); request i samples with seed <c>sampling.Seed + i</c>.
    /// </summary>
    public static IReadOnlyList<(string Response, int[] Ids, bool Eos)> Run(string folder, RolloutEngineKind engine, IReadOnlyList<string> texts,
        SamplingOptions sampling, int threads = 0, ComputeDevice device = ComputeDevice.Cpu)
    {
        DeviceSelector.SetThreads(threads);
        var tokenizer = TextTokenizer.Load(folder);
        using var rollouts = PolicyRollouts.ForFolder(engine, folder, tokenizer, threads, device);
        var results = rollouts.Generate([.. texts.Select((t, i) => RolloutRequest.FromText(t, sampling with { Seed = sampling.Seed + (ulong)i }))]);
        return [.. results.Select(x => (x.Text ?? "", x.ResponseIds, x.FinishReason == RolloutFinishReason.Eos))];
    }
}
