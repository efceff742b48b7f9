using Rlhf.Export;
using Rlhf.Export.Onnx;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Serving;
using Rlhf.Inference.Services;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Tests.Model;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// A replica serving a base exported with LoRA inputs (a real <c>rlhf-serve rollout</c> process on 127.0.0.1) takes a
/// LoRA actor's adapter alone over <c>PushWeights</c> and then samples what our engine samples with the same adapter;
/// an adapter that states another base is refused with a message, and the replica goes on serving.
/// </summary>
public sealed class AdapterReplicaTests
{
    [Fact]
    public async Task AReplicaTakesTheAdapterAloneAndRefusesOneMadeForAnotherBase()
    {
        var cfg = Rlhf.Tests.Shared.TinyLlama.Config("llama", headDim: 16) with { EosTokenIds = [] };
        using var m = TinyModels.Randomized(cfg, 5);
        var lora = m.AttachLora(new LoraSettings(4, 8, 0, LoraSettings.AllLinear), seed: 1, baseModel: "base");
        string dir = Directory.CreateTempSubdirectory("rlhf-adapter-replica-").FullName;
        try
        {
            var export = LoraAdapterExport.Export(m, Path.Combine(dir, "lora"), new ExportOptions());
            LoraTests.RandomizeB(lora, 7);   // the adapter has trained since the export
            using var server = ServerProcess.Start("rollout", "--model", export.Folder, "--threads", "1");
            using var remote = new RemoteRollouts(server.Address);
            Assert.Equal(new PolicyWeightFormat(PackedQkv: true, Int8: false, Lora: true), remote.WeightFormat);
            Assert.DoesNotContain(remote.WeightLayout.Keys, PolicyWeightFormat.IsLoraName);

            InferenceServices.Sync(remote, m, 1);   // the adapter alone, naming its base
            var requests = Enumerable.Range(0, 3).Select(i => RolloutRequest.FromIds([1, 7 + i, 3, 9], new SamplingOptions { Temperature = 1, MaxNewTokens = 6, Seed = (ulong)i })).ToList();
            var call = new RolloutCall { RequiredVersion = 1, Timeout = TimeSpan.FromSeconds(60) };
            var remoteResults = await remote.GenerateAsync(requests, call);
            using var engine = RolloutEngine.Load(export.Folder, new RolloutEngineOptions { Threads = 1, EosTokenIds = [], PadTokenId = 0 });
            Assert.Equal(LoraAdapterExport.BaseFingerprint(m), engine.AdapterBase);
            InferenceServices.Sync(engine, m, 1);
            var local = engine.Generate(requests, 1);
            Assert.Equal(local.Select(r => r.ResponseIds), remoteResults.Select(r => r.ResponseIds));
            Assert.Equal(local.Select(r => r.LogProbs), remoteResults.Select(r => r.LogProbs));

            // an adapter stating another base: refused by the replica (and in process), which keeps version 1 and serves on
            using var snapshot = InferenceServices.Snapshot(remote, m, 2);
            using var foreign = PolicyWeights.FromBuffers(2, snapshot.Buffers, baseFingerprint: new string('0', 64));
            var refused = await Assert.ThrowsAnyAsync<Exception>(() => remote.PushWeightsAsync(foreign, TimeSpan.FromSeconds(60)));
            Assert.Contains("base", refused.Message);
            Assert.Contains("base", (await Assert.ThrowsAnyAsync<ArgumentException>(() => engine.PushWeightsAsync(foreign))).Message);
            Assert.Equal(1UL, remote.WeightsVersion);
            Assert.Equal(remoteResults.Select(r => r.ResponseIds), (await remote.GenerateAsync(requests, call)).Select(r => r.ResponseIds));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void ExporterAndReadersNameTheSameMetadata()
    {
        Assert.Equal(LoraBase.MetadataKey, PolicyWeightFormat.LoraBaseKey);
        var b = LlamaContribGraph.Build(Rlhf.Tests.Shared.TinyLlama.Config("llama", headDim: 16), TinyWeights(), loraInputs: true);
        Assert.Equal(LlamaContribGraph.LoraMetadata, b.Metadata[PolicyWeightFormat.LoraKey]);
    }

    static Dictionary<string, TorchSharp.torch.Tensor> TinyWeights()
    {
        using var m = TinyModels.Randomized(Rlhf.Tests.Shared.TinyLlama.Config("llama", headDim: 16), 3);
        return m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone().DetachFromDisposeScope(), StringComparer.Ordinal);
    }
}
