using System.CommandLine;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;
using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Cli;

/// <summary><c>rlhf generate</c>: sample continuations from an HF model folder with the TorchSharp model (KV-cached).</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "HF model folder (config.json, model.safetensors, tokenizer files).", Required = true };
        var prompt = new Option<string[]>("--prompt") { Description = "A prompt (repeatable)." };
        var prompts = new Option<string?>("--prompts") { Description = "CSV/JSONL file with a prompt column." };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate per prompt.", DefaultValueFactory = _ => 64 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature (0 = greedy).", DefaultValueFactory = _ => 0.7 };
        var topK = new Option<int>("--top-k") { Description = "Keep the k most likely tokens (0 = off).", DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass (1 = off).", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { Description = "Sampling seed.", DefaultValueFactory = _ => 1 };
        var gold = new Option<bool>("--gold") { Description = "Also print the default task's gold score of each response." };
        var device = new Option<string>("--device") { Description = "cpu or cuda.", DefaultValueFactory = _ => "cpu" };
        var engine = new Option<string>("--engine") { Description = "torch (TorchSharp eager, KV cache).", DefaultValueFactory = _ => "torch" };
        var cmd = new Command("generate", "Sample continuations of prompts from a model folder.")
        {
            model, prompt, prompts, maxNew, temperature, topK, topP, seed, gold, device, engine,
        };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            if (r.GetValue(engine) != "torch")
                throw new ArgumentException($"--engine {r.GetValue(engine)} is not available; use torch.");
            var texts = new List<string>(r.GetValue(prompt) ?? []);
            if (r.GetValue(prompts) is string file) texts.AddRange(DataFiles.ReadPrompts(file).Records.Select(p => p.Prompt));
            if (texts.Count == 0) throw new ArgumentException("Give at least one --prompt or a --prompts file.");
            var dev = DeviceSelector.Resolve(DeviceSelector.Parse(r.GetValue(device)!));
            DeviceSelector.SetThreads(0);
            string folder = r.GetValue(model)!;
            var tokenizer = TextTokenizer.Load(folder);
            using var lm = LlamaForCausalLM.FromPretrained(folder, dev, ScalarType.Float32);
            var options = new GenerationOptions
            {
                MaxNewTokens = r.GetValue(maxNew), Temperature = r.GetValue(temperature), TopK = r.GetValue(topK),
                TopP = r.GetValue(topP), Seed = r.GetValue(seed),
                EosTokenIds = tokenizer.EosId is int e ? [e] : lm.Config.EosTokenIds, PadTokenId = tokenizer.PadId ?? 0,
            };
            var ids = texts.Select(t => PromptFormat.PromptIds(tokenizer, t).Select(x => (long)x).ToArray()).ToList();
            var outputs = Generation.Generate(lm, ids, options);
            for (int i = 0; i < texts.Count; i++)
            {
                string response = PromptFormat.ResponseText(tokenizer, outputs[i].Tokens.Select(t => (int)t));
                string line = PromptFormat.Join(texts[i], response);
                if (r.GetValue(gold))
                    line += $"\t[gold {GoldScorer.Score(texts[i], response, outputs[i].FinishReason == FinishReason.Stop).Total:F2}]";
                Console.WriteLine(line);
            }
            return 0;
        }));
        return cmd;
    }
}
