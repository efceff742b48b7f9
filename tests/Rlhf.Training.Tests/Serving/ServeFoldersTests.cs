using System.Text;
using System.Text.Json.Nodes;
using Rlhf.Training.Tests.Ppo;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// <c>serve rollout --model</c> with what a user has in hand: a stage folder (its <c>onnx/</c>) and an HF model folder
/// (<c>rlhf serve</c> exports it; <c>rlhf-serve</c>, without TorchSharp, says how). Real processes on 127.0.0.1.
/// </summary>
public sealed class ServeFoldersTests
{
    static async Task<string> Complete(string address, string model)
    {
        using var http = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(60) };
        var body = new JsonObject { ["model"] = model, ["prompt"] = "The pasta", ["max_tokens"] = 8, ["temperature"] = 0 };
        using var r = await http.PostAsync("/v1/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"));
        string text = await r.Content.ReadAsStringAsync();
        Assert.True(r.IsSuccessStatusCode, text);
        return (string)JsonNode.Parse(text)!["choices"]![0]!["text"]!;
    }

    [Fact]
    public async Task AStageFolderAndAnHfFolderServeTheSameModel()
    {
        string stage = PpoTrainerTests.Models.Value.Sft;   // an SFT stage folder: HF files and onnx/
        string hf = Path.Combine(Directory.CreateTempSubdirectory().FullName, "sft-hf");
        Directory.CreateDirectory(hf);
        foreach (var f in Directory.GetFiles(stage)) File.Copy(f, Path.Combine(hf, Path.GetFileName(f)));   // no onnx/

        using var fromStage = ServerProcess.StartDll(ServerProcess.ServerDll, 0, "rollout", "--model", stage, "--threads", "1");
        using var fromHf = ServerProcess.StartDll(ServerProcess.RlhfDll, 0, "serve", "rollout", "--model", hf, "--threads", "1");
        string a = await Complete(fromStage.Address, Path.GetFileName(stage));
        Assert.Equal(a, await Complete(fromHf.Address, "sft-hf"));
        Assert.False(Directory.Exists(Path.Combine(hf, "onnx")));   // exported to a temporary folder, not into the user's

        // rlhf-serve cannot export (no TorchSharp, so no exporter is given): a message that says how
        var e = Assert.Throws<ArgumentException>(() => new Rlhf.Inference.Serving.RolloutServeOptions { Model = hf, Port = 1 }.PolicyFolder());
        Assert.StartsWith($"--model '{hf}' is an HF model folder without an ONNX export: export it (rlhf export --model {hf}", e.Message);
    }
}
