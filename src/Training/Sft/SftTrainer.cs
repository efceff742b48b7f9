using System.Diagnostics;
using System.Text.Json;
using Rlhf.Export.Hf;
using Rlhf.Export;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Sft;

/// <summary>Headline figures of an SFT run (written as <c>summary.json</c>; keys in docs/outputs.md).</summary>
public sealed record SftSummary
{
    /// <summary>Always "sft".</summary>
    public string Stage { get; init; } = "sft";
    /// <summary>Optimizer steps taken.</summary>
    public int Steps { get; init; }
    /// <summary>Response tokens trained on.</summary>
    public long TrainTokens { get; init; }
    /// <summary>Mean response-token loss over the last 10% of steps.</summary>
    public double FinalTrainLoss { get; init; }
    /// <summary>Held-out response-token loss (nats/token), NaN without eval data.</summary>
    public double EvalLoss { get; init; }
    /// <summary>exp(eval_loss).</summary>
    public double EvalPerplexity { get; init; }
    /// <summary>Gold score of sampled responses on held-out prompts (default task only): mean.</summary>
    public double? GoldMean { get; init; }
    /// <summary>Gold score of sampled responses: standard deviation.</summary>
    public double? GoldStd { get; init; }
    /// <summary>Gold score of the held-out human-written (generator) responses: mean, for comparison.</summary>
    public double? GoldReferenceMean { get; init; }
    /// <summary>Fraction of samples that ended with EOS.</summary>
    public double? EosFraction { get; init; }
    /// <summary>Trainable parameters.</summary>
    public long Parameters { get; init; }
    /// <summary>Wall-clock seconds of the whole stage.</summary>
    public double Seconds { get; init; }
    /// <summary>Training throughput, tokens (all positions) per second.</summary>
    public double TokensPerSecond { get; init; }
}

/// <summary>
/// Supervised fine-tuning: next-token cross-entropy on response tokens only, AdamW with decoupled weight decay,
/// warm-up + cosine/linear decay, gradient clipping, held-out loss/perplexity, atomic checkpoints and exact resume.
/// </summary>
public static class SftTrainer
{
    const string CheckpointName = "checkpoint";

    /// <summary>Runs the stage end to end and returns its summary.</summary>
    public static SftSummary Run(SftConfig cfg, RunControl control)
    {
        cfg.Validate();
        using var log = StageLog.Use(control.Logger);
        return OutputFolder.CleanOnFailure(cfg.Out, () => RunStage(cfg, control));
    }

    static SftSummary RunStage(SftConfig cfg, RunControl control)
    {
        var clock = Stopwatch.StartNew();
        Device device = DeviceSelector.Resolve(DeviceSelector.Parse(cfg.Device));
        DeviceSelector.SetThreads(cfg.Threads);
        var data = SftData.Load(cfg);   // bad data fails before the output folder is touched
        using var chat = SftData.Template(cfg, data);
        string? resumeFrom = OutputFolder.Prepare(cfg.Out, control.Resume, control.Overwrite, CheckpointName);
        Log($"SFT data: {data.Train.Count} train, {data.Eval.Count} eval demonstrations" +
            (data.Skipped > 0 ? $" ({data.Skipped} malformed rows skipped)" : "") + (data.IsDefaultTask ? " (default task)" : ""));

        string modelSource = resumeFrom ?? cfg.InitFrom ?? PrepareFreshModel(cfg, data);
        var tokenizer = TextTokenizer.Load(modelSource);
        using var model = LlamaForCausalLM.FromPretrained(modelSource, device, ScalarType.Float32, WithDropout(cfg));
        model.Precision = cfg.Precision.Resolve(device);
        model.GradientCheckpointing = cfg.GradientCheckpointing;
        if (cfg.Lora().Enabled)   // a checkpoint holds the base and adapter/: resume reads both
            model.AttachLora(cfg.Lora(), cfg.Seed, cfg.InitFrom ?? Path.Combine(cfg.Out, "init"), from: resumeFrom);
        int padId = tokenizer.PaddingId;

        var train = WithTargets(data.Train.Select(e => SftBatch.Tokenize(tokenizer, e, cfg.MaxSeqLen, chat)), "training", cfg.MaxSeqLen);
        var eval = WithTargets(data.Eval.Select(e => SftBatch.Tokenize(tokenizer, e, cfg.MaxSeqLen, chat)), "held-out", cfg.MaxSeqLen);
        int perStep = cfg.BatchSize * cfg.GradAccum;
        int stepsPerEpoch = train.Length / perStep;
        if (stepsPerEpoch == 0)
            throw new InvalidDataException($"{train.Length} training examples are fewer than one step (batch_size × grad_accum = {perStep}).");
        int totalSteps = cfg.Epochs * stepsPerEpoch;
        if (cfg.MaxSteps > 0) totalSteps = Math.Min(totalSteps, cfg.MaxSteps);

        using var optimizer = Optimization.AdamW(model, new AdamWSettings(cfg.Lr, cfg.WeightDecay, cfg.Beta1, cfg.Beta2, cfg.AdamEps));
        var metrics = new MetricsTable();
        int startStep = 0;
        long trainTokens = 0;
        if (resumeFrom is not null)
        {
            (var state, metrics) = Checkpoints.Load<SftState>(resumeFrom, Optimizers(optimizer), ConfigLoader.ToJson(cfg));
            startStep = state.Step;
            trainTokens = state.TrainTokens;
            Log($"Resuming from step {startStep} of {totalSteps}.");
        }
        long parameters = Optimization.TrainableCount(model);
        Log($"Model: {parameters / 1e6:F2}M trainable parameters{(model.Lora is { } l ? $" (LoRA r={l.Settings.Rank} on {string.Join("/", l.Settings.TargetModules)}; base frozen)" : "")}, {totalSteps} steps of {perStep} sequences, device {device.type}, {model.Precision.ToString().ToLowerInvariant()}.");

        var steps = new StageSteps("sft", cfg.Out, totalSteps, startStep, cfg.CheckpointEvery, resumeFrom, control);
        double tokensTimed = 0, secondsTimed = 0;
        void TrainSteps()
        {
            for (int step = startStep; step < totalSteps; step++)
            {
                var stepClock = Stopwatch.StartNew();
                double lr = LrSchedule.At(step, totalSteps, cfg.Lr, cfg.Decay, cfg.WarmupSteps, cfg.MinLrRatio);
                Optimization.SetLr(optimizer, lr);
                torch.manual_seed(cfg.Seed * 1_000_003 + step);    // dropout noise depends on the step only: resume-exact
                model.train();
                Optimization.ClearGrads(optimizer);

                var micro = MicroBatches(train, step, stepsPerEpoch, cfg);
                long targets = micro.Sum(m => m.Sum(e => e.TargetCount));
                double lossSum = 0;
                long positions = 0;
                foreach (var examples in micro)
                {
                    using var scope = NewDisposeScope();
                    using var batch = SftBatch.Collate(examples, padId, device);
                    var loss = SftLoss.SummedNll(model, batch) / targets;
                    loss.backward();
                    lossSum += loss.item<float>();
                    positions += batch.InputIds.numel();
                }
                double gradNorm = Optimization.ClipGradNorm(model, cfg.GradClip);
                steps.CheckFinite(step, "the training loss", lossSum);
                steps.CheckFinite(step, "the gradient norm", gradNorm);
                optimizer.step();
                trainTokens += targets;
                double sec = stepClock.Elapsed.TotalSeconds;
                tokensTimed += positions; secondsTimed += sec;

                var row = new Dictionary<string, double>
                {
                    ["step"] = step + 1,
                    ["epoch"] = (step + 1) / (double)stepsPerEpoch,
                    ["lr"] = lr,
                    ["loss/train"] = lossSum,
                    ["grad_norm"] = gradNorm,
                    ["tokens/s"] = positions / sec,
                };
                bool last = step + 1 == totalSteps;
                if (eval.Length > 0 && ((step + 1) % cfg.EvalEvery == 0 || last))
                {
                    double el = EvalLoss(model, eval, padId, device, cfg.BatchSize);
                    row["loss/eval"] = el;
                    row["perplexity/eval"] = Math.Exp(el);
                    Log($"step {step + 1}/{totalSteps}  train {lossSum:F4}  eval {el:F4}  ppl {Math.Exp(el):F2}  lr {lr:E2}");
                }
                steps.EndStep(step + 1, row, metrics, () => SaveCheckpoint(cfg, model, modelSource, optimizer, metrics, step + 1, trainTokens));
            }
        }

        steps.Run("SFT", TrainSteps);

        // Final artefacts: the HF folder itself, plots, samples and the summary.
        model.SavePretrained(cfg.Out, ScalarType.Float32);
        TokenizerFiles.Copy(modelSource, cfg.Out);
        OnnxExport.ExportStage.AfterStage(model, cfg.Out, "sft");   // <out>/onnx: the frozen reference / rollout policy
        metrics.WriteCsv(Path.Combine(cfg.Out, "metrics.csv"));
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "sft_config.json"), ConfigLoader.ToJson(cfg));
        Plots.Lines(Path.Combine(cfg.Out, "loss.png"), "SFT loss (response tokens)", "step", "nats / token",
            [Plots.Series("train", metrics, "loss/train"), Plots.Series("eval", metrics, "loss/eval")]);

        var (_, lossY) = metrics.Series("step", "loss/train");
        double finalTrain = lossY.Length == 0 ? double.NaN : lossY.Skip(lossY.Length - Math.Max(1, lossY.Length / 10)).Average();
        double evalLoss = eval.Length > 0 ? metrics.Series("step", "loss/eval").Y.LastOrDefault(double.NaN) : double.NaN;
        var samples = data.IsDefaultTask && cfg.SampleCount > 0
            ? SftSamples.Generate(model, tokenizer, data.Eval.Take(cfg.SampleCount).ToList(), device, cfg.Seed, cfg.Out)
            : null;

        var summary = new SftSummary
        {
            Steps = totalSteps,
            TrainTokens = trainTokens,
            FinalTrainLoss = finalTrain,
            EvalLoss = evalLoss,
            EvalPerplexity = Math.Exp(evalLoss),
            GoldMean = samples?.GoldMean,
            GoldStd = samples?.GoldStd,
            GoldReferenceMean = samples?.ReferenceMean,
            EosFraction = samples?.EosFraction,
            Parameters = parameters,
            Seconds = clock.Elapsed.TotalSeconds,
            TokensPerSecond = secondsTimed > 0 ? tokensTimed / secondsTimed : 0,
        };
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "summary.json"), JsonSerializer.Serialize(summary, ConfigLoader.Json));
        return summary;
    }

    /// <summary>Micro-batches of optimizer step <paramref name="step"/>: the epoch's seeded permutation, sliced.</summary>
    internal static List<TokenizedExample[]> MicroBatches(TokenizedExample[] train, int step, int stepsPerEpoch, SftConfig cfg)
    {
        int epoch = step / stepsPerEpoch, within = step % stepsPerEpoch;
        int[] order = SplitMixRandom.Permutation(train.Length, cfg.Seed * 7919 + epoch);
        var result = new List<TokenizedExample[]>(cfg.GradAccum);
        for (int m = 0; m < cfg.GradAccum; m++)
        {
            int start = (within * cfg.GradAccum + m) * cfg.BatchSize;
            result.Add(order.Skip(start).Take(cfg.BatchSize).Select(i => train[i]).ToArray());
        }
        return result;
    }

    /// <summary>Mean response-token NLL over held-out examples (no dropout, no gradients).</summary>
    internal static double EvalLoss(LlamaForCausalLM model, TokenizedExample[] eval, int padId, Device device, int batchSize)
    {
        model.eval();
        using var noGrad = no_grad();
        double sum = 0;
        long count = 0;
        for (int i = 0; i < eval.Length; i += batchSize)
        {
            using var scope = NewDisposeScope();
            using var batch = SftBatch.Collate(eval.Skip(i).Take(batchSize).ToArray(), padId, device);
            sum += SftLoss.SummedNll(model, batch).item<float>();
            count += batch.TargetCount;
        }
        return sum / Math.Max(1, count);
    }

    static Func<ModelConfig, ModelConfig> WithDropout(SftConfig cfg) => c => c with
    {
        ResidualDropout = cfg.ResidualDropout ?? c.ResidualDropout,
        AttentionDropout = cfg.AttentionDropout ?? c.AttentionDropout,
    };

    /// <summary>The demonstrations that keep a response token within max_seq_len (a prompt or conversation prefix longer
    /// than that leaves nothing to learn, and a batch of such would divide by zero targets); how many were dropped is logged.</summary>
    static TokenizedExample[] WithTargets(IEnumerable<TokenizedExample> examples, string split, int maxSeqLen)
    {
        var all = examples.ToArray();
        var kept = all.Where(e => e.TargetCount > 0).ToArray();
        if (kept.Length < all.Length)
            Log($"{all.Length - kept.Length} {split} demonstrations have no response token within max_seq_len {maxSeqLen} and are left out; raise max_seq_len to keep them.");
        return kept;
    }

    /// <summary>A fresh model: tokenizer trained on the training texts, architecture from <see cref="SftConfig.ModelConfig"/>.</summary>
    static string PrepareFreshModel(SftConfig cfg, SftData data)
    {
        string folder = Path.Combine(cfg.Out, "init");
        var clock = Stopwatch.StartNew();
        var tokenizer = WriteFreshModel(folder, data.Train.Select(e => PromptFormat.Join(e.Prompt, e.Response)), cfg.TokenizerVocabSize, cfg.ModelConfig, cfg.Seed);
        Log($"Trained a byte-level BPE tokenizer ({tokenizer.VocabSize} tokens) and initialised the model in {clock.Elapsed.TotalSeconds:F1}s.");
        return folder;
    }

    /// <summary>
    /// Writes a fresh HF model folder: a byte-level BPE tokenizer trained on <paramref name="texts"/>, and a causal LM
    /// with the architecture of <paramref name="modelConfig"/> (repo-relative path allowed), the tokenizer's vocabulary
    /// size and special ids, and HF initialisation from <paramref name="seed"/>. Returns the tokenizer.
    /// </summary>
    internal static TextTokenizer WriteFreshModel(string folder, IEnumerable<string> texts, int vocabSize, string modelConfig, long seed)
    {
        var bpe = Data.Tokenizer.BpeTrainer.Train(texts, new Data.Tokenizer.BpeTrainerOptions { VocabSize = vocabSize });
        Directory.CreateDirectory(folder);
        bpe.Save(folder);
        var tokenizer = TextTokenizer.Load(folder);
        var arch = ModelConfig.Load(ShippedFiles.Find(modelConfig)
            ?? throw new FileNotFoundException($"Model config {modelConfig} not found (looked in the working folder and above the rlhf binary).", modelConfig)) with
        {
            VocabSize = tokenizer.VocabSize,
            BosTokenId = tokenizer.BosId,
            EosTokenIds = tokenizer.EosId is int e ? [e] : [],
            PadTokenId = tokenizer.PadId,
        };
        using var model = LlamaForCausalLM.Create(arch, CPU, ScalarType.Float32, seed);
        model.SavePretrained(folder, ScalarType.Float32);
        return tokenizer;
    }

    static string SaveCheckpoint(SftConfig cfg, LlamaForCausalLM model, string tokenizerSource, optim.Optimizer optimizer,
                                 MetricsTable metrics, int step, long trainTokens) =>
        Checkpoints.Save(Path.Combine(cfg.Out, CheckpointName), tmp =>
        {
            model.SavePretrained(tmp, ScalarType.Float32, merged: false);
            TokenizerFiles.Copy(tokenizerSource, tmp);
        }, Optimizers(optimizer), metrics, new SftState(step, trainTokens, ConfigLoader.ToJson(cfg)));

    static Dictionary<string, optim.Optimizer> Optimizers(optim.Optimizer optimizer) => new() { ["optimizer"] = optimizer };

    static void Log(string message) => StageLog.Info(message);

    sealed record SftState(int Step, long TrainTokens, string ConfigJson) : ICheckpointState;

}
