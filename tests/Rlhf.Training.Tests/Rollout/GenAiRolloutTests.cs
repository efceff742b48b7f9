using Rlhf.Export;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Cli;
using Rlhf.Training.Data.Tokenizer;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Tests.Export;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>
/// ONNX Runtime GenAI opens every policy folder we export and decodes as our engine and TorchSharp do; its logprobs
/// follow the trainer's convention; a <c>--weights inputs</c> graph follows in-memory weight updates.
/// </summary>
public sealed class GenAiRolloutTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"rlhf-genai-{Guid.NewGuid():N}");

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    /// <summary>Prompts of mixed lengths (right padding leaves a different number of pads on each row); no id is the pad id 0.</summary>
    static readonly int[][] Prompts = [[1, 5, 9, 12, 7], [1, 30], [1, 4, 4, 8, 16, 23, 42, 3, 77, 60, 11], [1], [1, 90, 33]];

    static SamplingOptions Greedy(int maxNew = 12) => new() { Temperature = 0, MaxNewTokens = maxNew };

    string Export(LlamaForCausalLM m, string name, GraphKind graph, WeightPlacement weights = WeightPlacement.Initializers, string? tokenizer = null)
    {
        string dir = Path.Combine(_dir, name);
        ExportStage.ExportPolicy(m, dir, graph, new ExportOptions { Weights = weights, TokenizerFolder = tokenizer }, parity: false);
        return dir;
    }

    /// <summary>
    /// Opens <paramref name="folder"/> (a policy folder a stage or <c>rlhf export</c> wrote) with GenAI and our engine and
    /// asserts equal greedy tokens and logprobs on prompts of mixed lengths; returns the number of tokens compared.
    /// </summary>
    internal static int AssertGenAiDecodesAsOurEngine(string folder, int vocab)
    {
        int[][] prompts = [.. Prompts.Select(p => p.Select(x => 3 + x % (vocab - 3)).ToArray())];
        var requests = prompts.Select(p => RolloutRequest.FromIds(p, Greedy())).ToList();
        using var genai = GenAiRolloutEngine.Load(folder, new GenAiEngineOptions { Threads = 2 });
        using var ours = RolloutEngine.Load(folder, new RolloutEngineOptions { Threads = 2 });
        var g = genai.Generate(requests);
        var o = ours.Generate(requests);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(o[i].ResponseIds, g[i].ResponseIds);
            for (int j = 0; j < g[i].LogProbs.Length; j++) Assert.Equal(o[i].LogProbs[j], g[i].LogProbs[j], 1e-4f);
        }
        return g.Sum(r => r.ResponseIds.Length);
    }

    [Fact]
    public void ExportCommandWritesBothWeightPlacements()
    {
        using var m = ExportModels.Policy("mistral", seed: 41);
        string hf = Path.Combine(_dir, "hf");
        m.SavePretrained(hf);
        string a = Path.Combine(_dir, "cli-initializers"), b = Path.Combine(_dir, "cli-inputs");
        Assert.Equal(0, RlhfCommand.Run(["export", "--model", hf, "--out", a]));
        Assert.Equal(0, RlhfCommand.Run(["export", "--model", hf, "--out", b, "--weights", "inputs"]));
        Assert.Equal("initializers", ExportManifest.Load(a).Weights);
        Assert.NotNull(ExportManifest.Load(a).Parity);
        Assert.Equal("inputs", ExportManifest.Load(b).Weights);
        Assert.True(AssertGenAiDecodesAsOurEngine(a, 96) > 0);
        using var fed = GenAiRolloutEngine.Load(b, new GenAiEngineOptions { Threads = 2 });
        using var w = OrtWeights.From(m, packedQkv: true);
        fed.UpdateWeights(w.Buffers);
        using var ours = RolloutEngine.Load(a, new RolloutEngineOptions { Threads = 2 });
        var requests = Prompts.Select(p => RolloutRequest.FromIds(p, Greedy())).ToList();
        Assert.Equal(ours.Generate(requests).Select(r => r.ResponseIds), fed.Generate(requests).Select(r => r.ResponseIds));
        Assert.NotEqual(0, RlhfCommand.Run(["export", "--model", hf, "--out", Path.Combine(_dir, "bad"), "--weights", "constants"]));
    }

    [Theory]
    [InlineData("llama", GraphKind.ContribGqa)]
    [InlineData("llama", GraphKind.Plain)]
    [InlineData("qwen2", GraphKind.ContribGqa)]
    [InlineData("qwen2", GraphKind.Plain)]
    [InlineData("llama_bias", GraphKind.Plain)]
    [InlineData("mistral", GraphKind.ContribGqa)]
    [InlineData("tied", GraphKind.ContribGqa)]
    [InlineData("tied", GraphKind.Plain)]
    [InlineData("mha", GraphKind.ContribGqa)]
    [InlineData("mha", GraphKind.Plain)]
    [InlineData("llama3", GraphKind.ContribGqa)]
    [InlineData("llama3", GraphKind.Plain)]
    [InlineData("linear", GraphKind.ContribGqa)]
    [InlineData("mistral_window", GraphKind.ContribGqa)]
    [InlineData("mistral_window", GraphKind.Plain)]
    [InlineData("qwen2_window", GraphKind.ContribGqa)]
    [InlineData("qwen2_window", GraphKind.Plain)]
    [InlineData("head_dim", GraphKind.ContribGqa)]
    public void EveryExportedPolicyOpensInGenAiAndDecodesAsOurEngine(string variant, GraphKind graph)
    {
        using var m = ExportModels.Policy(variant);
        string dir = Export(m, $"{variant}-{graph}", graph);
        var requests = Prompts.Select(p => RolloutRequest.FromIds(p, Greedy())).ToList();
        using var genai = GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { Threads = 2 });
        using var ours = RolloutEngine.Load(dir, new RolloutEngineOptions { Threads = 2 });
        var g = genai.Generate(requests);
        var o = ours.Generate(requests);
        var t = Generation.Generate(m, [.. Prompts.Select(p => p.Select(x => (long)x).ToArray())],
            new SamplingOptions { MaxNewTokens = 12, Temperature = 0 }, [2], 0);
        for (int i = 0; i < Prompts.Length; i++)
        {
            Assert.Equal(t[i].Tokens.Select(x => (int)x), g[i].ResponseIds);
            Assert.Equal(o[i].ResponseIds, g[i].ResponseIds);
            Assert.Equal(o[i].FinishReason, g[i].FinishReason);
            Assert.Equal(Prompts[i], g[i].PromptIds);
            for (int j = 0; j < g[i].LogProbs.Length; j++) Assert.Equal(o[i].LogProbs[j], g[i].LogProbs[j], 1e-4f);
        }
    }

    /// <summary>
    /// A HF folder whose generation_config.json lists a second EOS id (as Llama 3 Instruct's end-of-turn): the export
    /// writes the list into genai_config.json, and GenAI, our engine and TorchSharp all stop on the listed id.
    /// </summary>
    [Fact]
    public void GenerationConfigEosListStopsEveryEngine()
    {
        using var m = ExportModels.Policy("llama3", seed: 41);
        string hf = Path.Combine(_dir, "hf-eos");
        m.SavePretrained(hf);
        string plain = Path.Combine(_dir, "eos-before");
        Assert.Equal(0, RlhfCommand.Run(["export", "--model", hf, "--out", plain]));
        var requests = Prompts.Select(p => RolloutRequest.FromIds(p, Greedy())).ToList();
        int[] free;
        using (var before = RolloutEngine.Load(plain, new RolloutEngineOptions { Threads = 2 })) free = before.Generate(requests)[0].ResponseIds;
        int k = Enumerable.Range(1, free.Length - 1).First(i => free[i] != 2 && Array.IndexOf(free, free[i]) == i);   // first new id after the first token
        File.WriteAllText(Path.Combine(hf, "generation_config.json"), $$"""{"bos_token_id": 1, "eos_token_id": [2, {{free[k]}}], "pad_token_id": 0}""");

        string dir = Path.Combine(_dir, "eos-after");
        Assert.Equal(0, RlhfCommand.Run(["export", "--model", hf, "--out", dir]));
        var genaiConfig = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "genai_config.json")))!;
        Assert.Equal([2, free[k]], genaiConfig["model"]!["eos_token_id"]!.AsArray().Select(x => x!.GetValue<int>()));
        using var genai = GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { Threads = 2 });
        using var ours = RolloutEngine.Load(dir, new RolloutEngineOptions { Threads = 2 });
        var g = genai.Generate(requests);
        var o = ours.Generate(requests);
        using var loaded = LlamaForCausalLM.FromPretrained(hf, CPU, ScalarType.Float32);
        Assert.Equal([2, free[k]], loaded.Config.EosTokenIds);
        var t = Generation.Generate(loaded, [.. Prompts.Select(p => p.Select(x => (long)x).ToArray())],
            new SamplingOptions { MaxNewTokens = 12, Temperature = 0 }, [.. loaded.Config.EosTokenIds], 0);
        Assert.Equal(free[..(k + 1)], o[0].ResponseIds);
        Assert.Equal(RolloutFinishReason.Eos, o[0].FinishReason);
        for (int i = 0; i < Prompts.Length; i++)
        {
            Assert.Equal(o[i].ResponseIds, g[i].ResponseIds);
            Assert.Equal(o[i].FinishReason, g[i].FinishReason);
            Assert.Equal(t[i].Tokens.Select(x => (int)x), g[i].ResponseIds);
        }
    }

    [Theory]
    [InlineData(0.7f, 0, 1f)]
    [InlineData(1.0f, 5, 1f)]
    [InlineData(1.3f, 0, 0.9f)]
    public void SampledLogprobsAreTheTrainersLogSoftmaxOfLogitsOverT(float temperature, int topK, float topP)
    {
        using var m = ExportModels.Policy("qwen2", seed: 11);
        string dir = Export(m, "sampled", GraphKind.ContribGqa);
        using var genai = GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { Threads = 2 });
        var sampling = new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP, MaxNewTokens = 10, Seed = 42 };
        var results = genai.Generate([.. Prompts.Select(p => RolloutRequest.FromIds(p, sampling))]);
        int compared = 0;
        foreach (var r in results)
        {
            long[] seq = [.. r.PromptIds.Select(x => (long)x), .. r.ResponseIds.Select(x => (long)x)];
            using var logits = TinyModels.RowLogits(m, seq);                       // [S, V], independent TorchSharp forward
            using var lp = torch.nn.functional.log_softmax(logits / temperature, 1);
            for (int j = 0; j < r.ResponseIds.Length; j++)
            {
                float expected = lp[r.PromptIds.Length - 1 + j, r.ResponseIds[j]].item<float>();
                Assert.Equal(expected, r.LogProbs[j], 1e-4f);
                if (topK > 0) Assert.True(lp[r.PromptIds.Length - 1 + j].topk(topK).values[topK - 1].item<float>() <= expected + 1e-6f,
                    "a top-k draw must be among the k most likely tokens");
                compared++;
            }
        }
        Assert.True(compared >= 20, $"only {compared} tokens compared");
        // One generator seed per chunk, derived from the request seeds: the same requests give the same tokens.
        var again = genai.Generate([.. Prompts.Select(p => RolloutRequest.FromIds(p, sampling))]);
        Assert.Equal(results.Select(r => r.ResponseIds), again.Select(r => r.ResponseIds));
        var otherSeed = genai.Generate([.. Prompts.Select(p => RolloutRequest.FromIds(p, sampling with { Seed = 43 }))]);
        Assert.NotEqual(results.SelectMany(r => r.ResponseIds), otherSeed.SelectMany(r => r.ResponseIds));
    }

    [Fact]
    public void RepetitionPenaltyIsRefusedWithTheReason()
    {
        using var m = ExportModels.Policy("llama", seed: 13);
        string dir = Export(m, "penalty", GraphKind.ContribGqa);
        using var genai = GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { Threads = 2 });
        var e = Assert.Throws<ArgumentException>(() => genai.Generate([RolloutRequest.FromIds(Prompts[0], Greedy() with { RepetitionPenalty = 1.3f })]));
        Assert.Contains("repetition penalty", e.Message);
        Assert.Contains("--engine ort", e.Message);
    }

    [Fact]
    public void ChunksOf32GroupsBySettingsAndPerRowLimits()
    {
        using var m = ExportModels.Policy("llama", seed: 17);
        string dir = Export(m, "chunks", GraphKind.ContribGqa);
        // 41 requests: two sampling groups interleaved, per-row max_new_tokens 1..9.
        var requests = Enumerable.Range(0, 41).Select(i => RolloutRequest.FromIds(Prompts[i % Prompts.Length],
            i % 3 == 0 ? new SamplingOptions { Temperature = 0.8f, MaxNewTokens = 1 + i % 9, Seed = (ulong)i } : Greedy(1 + i % 9))).ToList();
        using var genai = GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { Threads = 2 });
        using var ours = RolloutEngine.Load(dir, new RolloutEngineOptions { Threads = 2 });
        var g = genai.Generate(requests);
        var o = ours.Generate(requests);
        Assert.Equal(41, g.Count);
        for (int i = 0; i < 41; i++)
        {
            var s = requests[i].Sampling!;
            Assert.Equal(Prompts[i % Prompts.Length], g[i].PromptIds);
            Assert.InRange(g[i].ResponseIds.Length, 1, s.MaxNewTokens);
            Assert.Equal(g[i].ResponseIds.Length, g[i].LogProbs.Length);
            var expected = g[i].ResponseIds[^1] == 2 ? RolloutFinishReason.Eos : RolloutFinishReason.Length;
            Assert.Equal(expected, g[i].FinishReason);
            if (expected == RolloutFinishReason.Length) Assert.Equal(s.MaxNewTokens, g[i].ResponseIds.Length);
            if (s.IsGreedy) Assert.Equal(o[i].ResponseIds, g[i].ResponseIds);
        }
        Assert.Throws<ArgumentException>(() => GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { MaxBatchSize = 33 }));

        // GenAI ends rows at genai_config.json's EOS ids: without one it refuses the folder.
        string cfgPath = Path.Combine(dir, "genai_config.json");
        File.WriteAllText(cfgPath, File.ReadAllText(cfgPath).Replace("\"eos_token_id\": 2,", "", StringComparison.Ordinal));
        Assert.Contains("eos_token_id", Assert.Throws<InvalidDataException>(() => GenAiRolloutEngine.Load(dir)).Message);
        var padInPrompt = Assert.Throws<ArgumentException>(() => genai.Generate([RolloutRequest.FromIds([1, 0, 5], Greedy())]));
        Assert.Contains("pad id 0", padInPrompt.Message);
    }

    [Fact]
    public void WeightInputsGraphFollowsInMemoryUpdates()
    {
        using var a = ExportModels.Policy("qwen2", seed: 21);
        using var b = ExportModels.Policy("qwen2", seed: 22);
        string dir = Export(a, "inputs", GraphKind.ContribGqa, WeightPlacement.Inputs);
        using (var names = OrtWeights.From(a, packedQkv: true))
        {
            var initializers = Rlhf.Inference.Onnx.OnnxInitializers.Read(Path.Combine(dir, "model.onnx"));
            Assert.DoesNotContain(names.Buffers.Keys, initializers.ContainsKey);   // no weight is written, every one is an input
            Assert.Contains("cos_cache", initializers.Keys);                      // constants stay
        }
        Assert.Equal("inputs", ExportManifest.Load(dir).Weights);
        using var genai = GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { Threads = 2 });
        Assert.True(genai.WeightsAreInputs);
        var requests = Prompts.Select(p => RolloutRequest.FromIds(p, Greedy())).ToList();
        var before = Assert.Throws<InvalidOperationException>(() => genai.Generate(requests));
        Assert.Contains("UpdateWeights", before.Message);

        foreach (var model in new[] { b, a, b })
        {
            var w = OrtWeights.From(model, packedQkv: true);
            genai.UpdateWeights(w.Buffers, w);
            var t = Generation.Generate(model, [.. Prompts.Select(p => p.Select(x => (long)x).ToArray())],
                new SamplingOptions { MaxNewTokens = 12, Temperature = 0 }, [2], 0);
            var g = genai.Generate(requests);
            for (int i = 0; i < Prompts.Length; i++) Assert.Equal(t[i].Tokens.Select(x => (int)x), g[i].ResponseIds);
        }

        // Wrong layouts are refused with the names and shapes involved.
        using var unpacked = OrtWeights.From(a, packedQkv: false);
        var e = Assert.Throws<ArgumentException>(() => genai.UpdateWeights(unpacked.Buffers));
        Assert.Contains("'model.layers.0.self_attn.qkv_proj.weight' is missing", e.Message);
        Assert.Contains("more", e.Message);   // 4 packed weights missing, 12 unpacked ones unknown: the first 10 are listed

        // A folder with initializers cannot take weights in memory, and says how to get one that can.
        string plainDir = Export(a, "initializers", GraphKind.ContribGqa);
        using var fixedWeights = GenAiRolloutEngine.Load(plainDir, new GenAiEngineOptions { Threads = 2 });
        using var w2 = OrtWeights.From(a, packedQkv: true);
        Assert.Contains("--weights inputs", Assert.Throws<InvalidOperationException>(() => fixedWeights.UpdateWeights(w2.Buffers)).Message);
    }

    [Fact]
    public void StopStringsAndTextPromptsWithATrainedTokenizer()
    {
        string[] corpus = [.. Enumerable.Range(0, 60).Select(i => $"the product {i % 7} was great and the service was slow, review number {i}.")];
        string tokDir = Path.Combine(_dir, "tok");
        var bpe = BpeTrainer.Train(corpus, new BpeTrainerOptions { VocabSize = 300 });
        bpe.Save(tokDir);
        var cfg = ExportModels.Config("llama") with { VocabSize = bpe.VocabSize };
        using var m = TinyModels.Randomized(cfg, 31);
        string dir = Export(m, "tokenized", GraphKind.ContribGqa, tokenizer: tokDir);
        var tok = TextTokenizer.Load(dir);
        using var genai = GenAiRolloutEngine.Load(dir, new GenAiEngineOptions { Threads = 2 });
        using var ours = RolloutEngine.Load(dir, new RolloutEngineOptions { Threads = 2 });
        var full = ours.Generate(RolloutRequest.FromText("the product", Greedy(20)));
        var fromGenAi = genai.Generate([RolloutRequest.FromText("the product", Greedy(20))])[0];
        Assert.Equal(PromptFormat.PromptIds(tok, "the product"), fromGenAi.PromptIds);   // BOS + prompt
        Assert.Equal(full.ResponseIds, fromGenAi.ResponseIds);
        Assert.Equal(full.Text, fromGenAi.Text);

        // A visible stop string from the middle of the greedy text: both engines cut just before it.
        string text = tok.Decode(full.ResponseIds, skipSpecial: true);
        int cut = Enumerable.Range(3, Math.Max(0, text.Length - 6)).First(i => !char.IsWhiteSpace(text[i]) && !char.IsWhiteSpace(text[i + 1]));
        string stop = text.Substring(cut, 2);
        int first = text.IndexOf(stop, StringComparison.Ordinal);
        var sampling = Greedy(20) with { StopStrings = [stop] };
        var g = genai.Generate([RolloutRequest.FromText("the product", sampling)])[0];
        var o = ours.Generate(RolloutRequest.FromText("the product", sampling));
        Assert.Equal(RolloutFinishReason.StopString, g.FinishReason);
        Assert.Equal(text[..first].TrimStart(), g.Text);
        Assert.Equal(o.Text, g.Text);
        Assert.Equal(o.ResponseIds, g.ResponseIds);

        // The CLI engine option end to end.
        var viaCli = GenerateCommand.Run(dir, RolloutEngineKind.Genai, ["the product"], new SamplingOptions { MaxNewTokens = 20, Temperature = 0, Seed = 1 }, threads: 2);
        Assert.Equal(full.ResponseIds, viaCli[0].Ids);
    }
}
