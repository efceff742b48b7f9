using Rlhf.Export;
using Rlhf.Export.Hf;
using Rlhf.Training.Data.Tokenizer;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Tests.Export;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// Tiny models the serving tests share: a BPE tokenizer, a policy exported as the rollout default (GroupQueryAttention
/// graph, GenAI folder) and a second policy with other weights (pushed to a replica), and a reward model's ONNX folder.
/// </summary>
internal sealed class ServeModels : IDisposable
{
    static readonly string[] Corpus = [.. Enumerable.Range(0, 60).Select(i => $"the product {i % 7} was great and the service was slow, review number {i}.")];

    public ServeModels()
    {
        Dir = Path.Combine(Path.GetTempPath(), $"rlhf-serve-{Guid.NewGuid():N}");
        string tok = Path.Combine(Dir, "tokenizer");
        var bpe = BpeTrainer.Train(Corpus, new BpeTrainerOptions { VocabSize = 300 });
        bpe.Save(tok);
        Config = ExportModels.Config("llama") with { VocabSize = bpe.VocabSize };
        Policy = Path.Combine(Dir, "tiny-policy");
        using (var m = TinyModels.Randomized(Config, 9))
            ExportStage.ExportPolicy(m, Policy, ExportStage.DefaultGraph(Config), new ExportOptions { TokenizerFolder = tok }, parity: false);
        Other = TinyModels.Randomized(Config, 10);
        Reward = Path.Combine(Dir, "tiny-rm");
        using (var rm = LlamaForSequenceClassification.Create(Config, torch.CPU, ScalarType.Float32, 11))
        {
            TinyModels.Scramble(rm, 11);
            rm.eval();
            ExportStage.ExportReward(rm, Reward, ModelKind.Reward, new ExportOptions { TokenizerFolder = tok }, parity: false);
        }
        TokenFile = Path.Combine(Dir, "token");
        File.WriteAllText(TokenFile, Token + "\n");
    }

    public string Dir { get; }
    public ModelConfig Config { get; }
    /// <summary>The served policy's ONNX folder (its name is the model id).</summary>
    public string Policy { get; }
    /// <summary>Other policy weights (pushed as version 1).</summary>
    public LlamaForCausalLM Other { get; }
    /// <summary>The reward model's ONNX folder.</summary>
    public string Reward { get; }
    public const string Token = "test-token-0123456789";
    public string TokenFile { get; }

    /// <summary>A copy of the served policy folder named <paramref name="name"/>, its tokenizer_config.json given <paramref name="template"/>.</summary>
    public string ChatFolder(string name, string template)
    {
        string folder = Path.Combine(Dir, name);
        Directory.CreateDirectory(folder);
        foreach (var f in Directory.GetFiles(Policy)) File.Copy(f, Path.Combine(folder, Path.GetFileName(f)), overwrite: true);
        string configFile = Path.Combine(folder, "tokenizer_config.json");
        var config = File.Exists(configFile) ? System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(configFile))!.AsObject() : [];
        config["chat_template"] = template;
        File.WriteAllText(configFile, config.ToJsonString());
        return folder;
    }

    public void Dispose()
    {
        Other.Dispose();
        try { Directory.Delete(Dir, true); } catch (IOException) { }
    }
}
