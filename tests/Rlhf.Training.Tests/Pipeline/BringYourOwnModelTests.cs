using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Export.Hf;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data.Tokenizer;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Serving;
using TorchSharp;
using Xunit.Abstractions;

namespace Rlhf.Training.Tests.Pipeline;

/// <summary>
/// The README's "Bring your own model and data" walkthrough, run as a user types it: an HF chat-model folder and TRL
/// conversational files → <c>rlhf sft</c> → <c>rlhf rm</c> → <c>rlhf ppo</c> → <c>rlhf serve rollout</c> answering
/// <c>/v1/chat/completions</c>. The folders are tiny random models made here, shaped like Qwen2.5-Instruct (its real chat
/// template, no BOS, &lt;|im_end|&gt; as EOS, untied head) and like Llama-3.2-Instruct (its real template,
/// &lt;|begin_of_text|&gt; as BOS, &lt;|eot_id|&gt; as EOS, llama3 rope scaling, tied embeddings).
/// </summary>
public sealed class BringYourOwnModelTests(ITestOutputHelper output) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-byom-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static readonly TimeSpan StageDeadline = TimeSpan.FromMinutes(4);
    const string Token = "walkthrough-token-0123";

    /// <summary>Things and their colours: the first 40 are trained on, the last 8 held out.</summary>
    static readonly (string Thing, string Colour)[] Facts =
    [
        ("lemon", "yellow"), ("banana", "yellow"), ("tomato", "red"), ("cherry", "red"), ("lime", "green"), ("leaf", "green"),
        ("sky", "blue"), ("sapphire", "blue"), ("snowball", "white"), ("cloud", "white"), ("crow", "black"), ("coal", "black"),
        ("carrot", "orange"), ("pumpkin", "orange"), ("plum", "purple"), ("grape", "purple"), ("flamingo", "pink"), ("piglet", "pink"),
        ("walnut", "brown"), ("bear", "brown"), ("pearl", "white"), ("ruby", "red"), ("emerald", "green"), ("lavender", "purple"),
        ("canary", "yellow"), ("frog", "green"), ("strawberry", "red"), ("raven", "black"), ("chestnut", "brown"), ("daisy", "white"),
        ("ocean", "blue"), ("apricot", "orange"), ("peach", "pink"), ("violet", "purple"), ("mustard", "yellow"), ("olive", "green"),
        ("tangerine", "orange"), ("cocoa", "brown"), ("swan", "white"), ("blueberry", "blue"),
        ("sunflower", "yellow"), ("fire truck", "red"), ("cucumber", "green"), ("jeans", "blue"), ("milk", "white"), ("ink", "black"),
        ("orange", "orange"), ("coffee", "brown"),
    ];

    const int Trained = 40;
    static readonly string[] Questions = ["What colour is a {0}?", "Tell me the colour of a {0}.", "Which colour does a {0} have?"];
    static readonly string[] Rude = ["No idea.", "Ask someone else.", "Why would I know that?", "Not telling."];

    static string Question(int fact, int variant) => string.Format(Questions[variant % Questions.Length], Facts[fact].Thing);
    static string Answer(int fact) => $"Certainly! A {Facts[fact].Thing} is {Facts[fact].Colour}.";

    static object User(string text) => new { role = "user", content = text };
    static object Assistant(string text) => new { role = "assistant", content = text };

    /// <summary>TRL's conversational files: SFT <c>messages</c> (some with a system message, some two-turn; a third of the
    /// answers curt, so the SFT model answers both ways and the RM has something to prefer), preference pairs
    /// <c>prompt</c>/<c>chosen</c>/<c>rejected</c> (train and held-out), and PPO <c>prompt</c> conversations.</summary>
    string WriteData()
    {
        string data = Directory.CreateDirectory(Path.Combine(_dir, "data")).FullName;
        var sft = new List<string>();
        for (int i = 0; i < Trained; i++)
            for (int v = 0; v < Questions.Length; v++)
            {
                int shape = (i + v) % 4;
                string answer = (i + 2 * v) % 3 == 2 ? Rude[(i + v) % Rude.Length] : Answer(i);
                object[] messages = shape switch
                {
                    0 => [new { role = "system", content = "You are a polite assistant." }, User(Question(i, v)), Assistant(answer)],
                    1 => [User(Question(i, v)), Assistant(Answer(i)), User(Question((i + 7) % Trained, v + 1)), Assistant(answer)],
                    _ => [User(Question(i, v)), Assistant(answer)],
                };
                sft.Add(JsonSerializer.Serialize(new { messages }));
            }
        File.WriteAllLines(Path.Combine(data, "sft.jsonl"), sft);
        string Pair(int i, int v) => JsonSerializer.Serialize(new
        {
            prompt = new[] { User(Question(i, v)) }, chosen = new[] { Assistant(Answer(i)) }, rejected = new[] { Assistant(Rude[(i + v) % Rude.Length]) },
        });
        File.WriteAllLines(Path.Combine(data, "prefs.jsonl"), Enumerable.Range(0, Trained).SelectMany(i => Enumerable.Range(0, 2).Select(v => Pair(i, v))));
        File.WriteAllLines(Path.Combine(data, "prefs_eval.jsonl"), Enumerable.Range(Trained, Facts.Length - Trained).SelectMany(i => Enumerable.Range(0, 3).Select(v => Pair(i, v))));
        File.WriteAllLines(Path.Combine(data, "prompts.jsonl"), Enumerable.Range(0, Questions.Length).SelectMany(v =>
            Enumerable.Range(0, Facts.Length).Select(i => JsonSerializer.Serialize(new { prompt = new[] { User(Question(i, v)) } }))));
        return data;
    }

    /// <summary>
    /// A tiny random chat model as an HF folder: a byte-level BPE tokenizer trained on the task's words with the shape's
    /// special tokens, the real chat template in tokenizer_config.json, and config.json (+ generation_config.json).
    /// </summary>
    string ChatModel(string name, string template, string bos, string eos, string pad, bool addsBos, string configJson)
    {
        string folder = Directory.CreateDirectory(Path.Combine(_dir, name)).FullName;
        // The tokenizer knows the task's words and the template's markup, as a real model's tokenizer knows its own.
        using var chat = ChatTemplate.FromSource(template, addsBos ? bos : null, eos);
        var texts = Enumerable.Range(0, Facts.Length).SelectMany(i => Enumerable.Range(0, Questions.Length).Select(v =>
            chat.Render([new ChatMessage("user", Question(i, v)), new ChatMessage("assistant", v == 2 ? Rude[i % Rude.Length] : Answer(i))], addGenerationPrompt: false)));
        var bpe = BpeTrainer.Train(texts, new BpeTrainerOptions { VocabSize = 700, MinFrequency = 2, BosToken = bos, EosToken = eos, PadToken = pad });
        bpe.Save(folder);
        string configFile = Path.Combine(folder, "tokenizer_config.json");
        var tc = JsonNode.Parse(File.ReadAllText(configFile))!.AsObject();
        tc["chat_template"] = template;
        tc["add_bos_token"] = addsBos;
        if (!addsBos) tc["bos_token"] = null;   // Qwen2.5: no BOS token at all
        File.WriteAllText(configFile, tc.ToJsonString());
        var tokenizer = TextTokenizer.Load(folder);
        var config = JsonNode.Parse(configJson)!.AsObject();
        config["vocab_size"] = tokenizer.VocabSize;
        config["eos_token_id"] = tokenizer.EosId;
        config["pad_token_id"] = tokenizer.PadId;
        if (tokenizer.BosId is int b) config["bos_token_id"] = b;
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        File.WriteAllText(Path.Combine(folder, "generation_config.json"),
            new JsonObject { ["eos_token_id"] = new JsonArray(tokenizer.EosId, tokenizer.PadId), ["pad_token_id"] = tokenizer.PadId }.ToJsonString());
        using var model = LlamaForCausalLM.Create(ModelConfig.LoadFolder(folder), torch.CPU, torch.ScalarType.Float32, seed: 3);
        model.SavePretrained(folder, torch.ScalarType.Float32);
        return folder;
    }

    static string Template(string file) => File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "ChatTemplates", file));

    string QwenShaped() => ChatModel("qwen2.5-tiny-instruct", Template("Qwen2.5-Instruct.jinja"), "<|im_start|>", "<|im_end|>", "<|endoftext|>", addsBos: false, """
        {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 176,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
         "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": false,
         "use_sliding_window": false, "sliding_window": 256, "torch_dtype": "float32"}
        """);

    string LlamaShaped() => ChatModel("llama-3.2-tiny-instruct", Template("Llama-3.2-Instruct.jinja"), "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", addsBos: true, """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
         "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": true,
         "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
         "torch_dtype": "float32"}
        """);

    [Fact]
    public Task QwenShapedFolderWalksThroughSftRmPpoAndServing() => Walkthrough(QwenShaped(), expectsBos: false);

    [Fact]
    public Task LlamaShapedFolderWalksThroughSftRmPpoAndServing() => Walkthrough(LlamaShaped(), expectsBos: true);

    async Task Walkthrough(string model, bool expectsBos)
    {
        string data = WriteData(), runs = Path.Combine(_dir, "runs");
        var tokenizer = TextTokenizer.Load(model);
        Assert.Equal(expectsBos, tokenizer.AddedBosId is not null);

        // rlhf sft: the conversations through the model's own template, loss on the assistant turns
        Run("sft", "--init-from", model, "--train-file", Path.Combine(data, "sft.jsonl"), "--out", Path.Combine(runs, "sft"),
            "--epochs", "20", "--lr", "3e-3", "--batch-size", "16", "--threads", "1", "--set", "max_seq_len=256", "--set", "warmup_steps=10");
        // rlhf rm: conversational preference pairs, held-out pairs for accuracy
        Run("rm", "--sft-model", Path.Combine(runs, "sft"), "--pairs", Path.Combine(data, "prefs.jsonl"), "--eval-pairs", Path.Combine(data, "prefs_eval.jsonl"),
            "--out", Path.Combine(runs, "rm"), "--threads", "1", "--set", "epochs=3", "--set", "lr=1e-3", "--set", "max_seq_len=256",
            "--set", "max_new_tokens=16", "--set", "eval_prompts=24");
        var rm = JsonNode.Parse(File.ReadAllText(Path.Combine(runs, "rm", "summary.json")))!;
        Assert.True((double)rm["pairwise_accuracy"]! >= 0.9, $"held-out RM accuracy {rm["pairwise_accuracy"]}");
        Assert.StartsWith("24 SFT samples on held-out prompts of", (string?)rm["normalization"]!["source"]);
        // rlhf ppo: conversational prompts, the last ones held out
        Run("ppo", "--sft-model", Path.Combine(runs, "sft"), "--rm-model", Path.Combine(runs, "rm"), "--prompts", Path.Combine(data, "prompts.jsonl"),
            "--iterations", "12", "--out", Path.Combine(runs, "ppo"), "--threads", "1", "--set", "rollout_batch=32", "--set", "mini_batch=16",
            "--set", "max_new_tokens=16", "--set", "eval_prompts=12", "--set", "eval_every=4", "--set", "best_of_n=[1,2]", "--set", "early_stop_patience=0");
        var ppo = JsonNode.Parse(File.ReadAllText(Path.Combine(runs, "ppo", "summary.json")))!;
        // PPO raises the RM score of its own rollouts. The held-out score is not asserted: its 12 prompts ask about facts
        // the tiny model never saw in SFT, and whether it rose in 12 iterations changed with last-bit numerics (measured on
        // the Qwen shape: −0.26 → +0.22 with q, k and v as three products, → −0.30 with them as one, while the rollouts'
        // score went −0.15 → +0.29 and −0.15 → +0.25).
        var m = MetricsTable.ReadCsv(Path.Combine(runs, "ppo", "metrics.csv"));
        double first = m.Rows.Take(4).Average(r => r["objective/rm_scores"]), last = m.Rows.TakeLast(4).Average(r => r["objective/rm_scores"]);
        Assert.True(last > first + 0.2, $"PPO rollouts' RM score {first:F3} in the first 4 iterations, {last:F3} in the last 4");
        Assert.Null(ppo["gold_gain_in_sft_std"]);
        Assert.DoesNotContain("gold", File.ReadAllText(Path.Combine(runs, "ppo", "report.md")));

        // rlhf dpo: the same conversational pairs, no RM; the implicit reward orders the held-out pairs
        Run("dpo", "--sft-model", Path.Combine(runs, "sft"), "--pairs", Path.Combine(data, "prefs.jsonl"), "--eval-pairs", Path.Combine(data, "prefs_eval.jsonl"),
            "--out", Path.Combine(runs, "dpo"), "--threads", "1", "--epochs", "3", "--lr", "5e-4", "--set", "max_seq_len=256");
        var dpo = JsonNode.Parse(File.ReadAllText(Path.Combine(runs, "dpo", "summary.json")))!;
        Assert.True((double)dpo["held_out_reward_accuracy"]! >= 0.9, $"DPO held-out implicit-reward accuracy {dpo["held_out_reward_accuracy"]}");
        Assert.Null(dpo["policy"]);   // no gold comparison on the user's data

        // every stage's folder keeps the tokenizer, the chat template and generation_config.json it started from
        foreach (string stage in new[] { "sft", "rm", "ppo", "dpo" })
        {
            Assert.Equal(File.ReadAllText(Path.Combine(model, "tokenizer_config.json")), File.ReadAllText(Path.Combine(runs, stage, "tokenizer_config.json")));
            Assert.Equal(File.ReadAllText(Path.Combine(model, "generation_config.json")), File.ReadAllText(Path.Combine(runs, stage, "generation_config.json")));
        }

        // rlhf serve rollout: the aligned policy answers a held-out question in the demonstrated style
        string tokenFile = Path.Combine(_dir, "token");
        File.WriteAllText(tokenFile, Token + "\n");
        using var server = ServerProcess.StartDll(ServerProcess.RlhfDll, 0, "serve", "rollout", "--model", Path.Combine(runs, "ppo"), "--threads", "1", "--token-file", tokenFile);
        using var http = new HttpClient { BaseAddress = new Uri(server.Address), Timeout = TimeSpan.FromSeconds(60) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Token);
        string request = JsonSerializer.Serialize(new { model = "ppo", messages = new[] { User(Question(Facts.Length - 1, 0)) }, max_completion_tokens = 16, temperature = 0 });
        using var response = await http.PostAsync("/v1/chat/completions", new StringContent(request, Encoding.UTF8, "application/json"));
        string body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, body);
        string answer = (string)JsonNode.Parse(body)!["choices"]![0]!["message"]!["content"]!;
        output.WriteLine($"RM held-out accuracy {rm["pairwise_accuracy"]}; DPO held-out accuracy {dpo["held_out_reward_accuracy"]}; RM score SFT {ppo["sft_score"]} -> PPO {ppo["ppo_score"]} " +
                         $"(win rate {ppo["rm_win_rate_vs_sft"]}, KL {ppo["ppo_kl"]}); served answer: {answer}");
        Assert.StartsWith("Certainly! A ", answer);
    }

    static void Run(params string[] args)
    {
        var (code, output) = ServerProcess.RunCli(StageDeadline, null, args);
        Assert.True(code == 0, $"rlhf {string.Join(' ', args)} exited with {code}:\n{output}");
    }
}
