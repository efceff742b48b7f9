using Rlhf.Export;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;
using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Sft;

/// <summary>Gold-score statistics of responses sampled from the fine-tuned model on held-out prompts.</summary>
public sealed record SampleReport(double GoldMean, double GoldStd, double ReferenceMean, double EosFraction);

/// <summary>Samples held-out prompts after SFT, scores them with the default task's gold scorer, writes samples.csv and gold.png.</summary>
public static class SftSamples
{
    /// <summary>Temperature used for the report samples (PPO rollouts use their own).</summary>
    public const float Temperature = 0.7f;

    /// <summary>Generates one response per held-out example, scores it and writes the artefacts into <paramref name="outFolder"/>.</summary>
    public static SampleReport Generate(LlamaForCausalLM model, TextTokenizer tokenizer, IReadOnlyList<SftExample> heldOut,
                                        Device device, long seed, string outFolder)
    {
        var prompts = heldOut.Select(e => PromptFormat.PromptIds(tokenizer, e.Prompt).Select(x => (long)x).ToArray()).ToList();
        var eos = Generation.StopIds(model.Config, tokenizer);
        var generated = new List<GeneratedSequence>();
        for (int i = 0; i < prompts.Count; i += 32)
            generated.AddRange(Generation.Generate(model, prompts.Skip(i).Take(32).ToList(),
                new SamplingOptions { MaxNewTokens = 64, Temperature = Temperature, Seed = (ulong)(seed + i) }, eos, tokenizer.PaddingId));

        var rows = new List<string[]>();
        var gold = new double[heldOut.Count];
        var reference = new double[heldOut.Count];
        int eosCount = 0;
        for (int i = 0; i < heldOut.Count; i++)
        {
            bool endedWithEos = generated[i].FinishReason == RolloutFinishReason.Eos;
            if (endedWithEos) eosCount++;
            string response = PromptFormat.ResponseText(tokenizer, generated[i].Tokens.Select(t => (int)t));
            gold[i] = GoldScorer.Score(heldOut[i].Prompt, response, endedWithEos).Total;
            reference[i] = GoldScorer.Score(heldOut[i].Prompt, heldOut[i].Response).Total;
            rows.Add([heldOut[i].Prompt, response, endedWithEos ? "1" : "0", gold[i].ToString("F3"), heldOut[i].Response, reference[i].ToString("F3")]);
        }
        AtomicFile.Write(Path.Combine(outFolder, "samples.csv"), tmp =>
        {
            using var w = CsvHelper.CsvWriter.ToFile(tmp);
            w.WriteHeader(["prompt", "response", "ended_with_eos", "gold", "reference_response", "reference_gold"]);
            foreach (var r in rows) w.WriteRecord(r);
        });
        Plots.Histograms(Path.Combine(outFolder, "gold.png"), "Gold score: SFT samples vs held-out references", "gold score",
            [("SFT samples", gold), ("references", reference)]);
        var (mean, std) = Statistics.MeanStd(gold);
        return new SampleReport(mean, std, reference.Average(), eosCount / (double)heldOut.Count);
    }
}
