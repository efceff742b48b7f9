using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Export;
using Rlhf.Training.Common;
using Rlhf.Training.Dpo;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;

namespace Rlhf.Training.Pipeline;

/// <summary>
/// Chains the stages SFT → RM → PPO (or SFT → DPO with <see cref="PipelineAlgorithm.Dpo"/>), then (<see cref="PipelineConfig.Rounds"/> &gt; 1) further RM → PPO rounds
/// (<see cref="PipelineRounds"/>). A stage whose folder already holds its summary.json is reused, one
/// with a checkpoint but no summary is resumed, anything else starts fresh; <c>--overwrite</c> reruns everything.
/// </summary>
public static class PipelineRunner
{
    /// <summary>Runs the pipeline and returns its summary (also written to <c>summary.json</c>).</summary>
    public static JsonObject Run(PipelineConfig cfg, RunControl control)
    {
        cfg.Validate();
        using var log = StageLog.Use(control.Logger);
        // a failed pipeline keeps its stage folders (finished or resumable) and drops a folder with nothing else in it
        return OutputFolder.CleanOnFailure(cfg.Out, () => RunStages(cfg, control),
            keep: f => new[] { "sft", "rm", "ppo", "dpo" }.Any(s => Directory.Exists(Path.Combine(f, s))) || Directory.EnumerateDirectories(f, "round*").Any());
    }

    static JsonObject RunStages(PipelineConfig cfg, RunControl control)
    {
        var clock = Stopwatch.StartNew();
        if (control.Overwrite && Directory.Exists(cfg.Out)) Directory.Delete(cfg.Out, recursive: true);
        OutputFolder.Create(cfg.Out);
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "pipeline_config.json"), ConfigLoader.ToJson(cfg));
        var summary = new JsonObject { ["stage"] = "pipeline" };

        string sftFolder = cfg.SftFrom ?? Path.Combine(cfg.Out, "sft");
        if (cfg.SftFrom is null)
        {
            var sft = cfg.Sft with { Out = sftFolder, Seed = cfg.Seed, Device = cfg.Device, Threads = cfg.Threads };
            summary["sft"] = Stage("SFT", sftFolder, control, c => JsonSerializer.SerializeToNode(SftTrainer.Run(sft, c), ConfigLoader.Json)!);
        }
        else summary["sft"] = ReadSummary(sftFolder);

        if (cfg.Algorithm == PipelineAlgorithm.Dpo)
        {
            string dpoFolder = Path.Combine(cfg.Out, "dpo");
            var dpo = cfg.Dpo with { Out = dpoFolder, SftModel = sftFolder, Seed = cfg.Seed, Device = cfg.Device, Threads = cfg.Threads };
            summary["dpo"] = Stage("DPO", dpoFolder, control, c => JsonSerializer.SerializeToNode(DpoTrainer.Run(dpo, c), ConfigLoader.Json)!);
            return Finish(cfg, summary, clock);
        }

        string rmFolder = cfg.RmFrom ?? Path.Combine(cfg.Out, "rm");
        if (cfg.RmFrom is null)
        {
            var rm = cfg.Rm with { Out = rmFolder, SftModel = sftFolder, Seed = cfg.Seed, Device = cfg.Device, Threads = cfg.Threads };
            summary["rm"] = Stage("RM", rmFolder, control, c => JsonSerializer.SerializeToNode(RmTrainer.Run(rm, c), ConfigLoader.Json)!);
        }
        else summary["rm"] = ReadSummary(rmFolder);

        string ppoFolder = Path.Combine(cfg.Out, "ppo");
        var ppo = cfg.PpoForAlgorithm() with { Out = ppoFolder, SftModel = sftFolder, RmModel = rmFolder, Seed = cfg.Seed, Device = cfg.Device, Threads = cfg.Threads };
        summary["ppo"] = Stage("PPO", ppoFolder, control, c => JsonSerializer.SerializeToNode(PpoTrainer.Train(ppo, c), ConfigLoader.Json)!);
        if (cfg.Rounds > 1)
            summary["rounds"] = JsonSerializer.SerializeToNode(
                PipelineRounds.Run(cfg, control, sftFolder, rmFolder, ppoFolder, summary["rm"]!, summary["ppo"]!), ConfigLoader.Json);

        return Finish(cfg, summary, clock);
    }

    static JsonObject Finish(PipelineConfig cfg, JsonObject summary, Stopwatch clock)
    {
        summary["seconds"] = clock.Elapsed.TotalSeconds;
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "summary.json"), summary.ToJsonString(ConfigLoader.Json));
        return summary;
    }

    internal static JsonNode Stage(string name, string folder, RunControl control, Func<RunControl, JsonNode> run)
    {
        string summaryFile = Path.Combine(folder, "summary.json");
        if (File.Exists(summaryFile))
        {
            StageLog.Info($"== {name}: reusing {folder}");
            return ReadSummary(folder);
        }
        var stageControl = Stages.ResumeOrStart(folder, control);
        StageLog.Info($"== {name}: {(stageControl.Resume ? "resuming" : "running")} into {folder}");
        return run(stageControl);
    }

    static JsonNode ReadSummary(string folder)
    {
        string f = Path.Combine(folder, "summary.json");
        return File.Exists(f) ? JsonNode.Parse(File.ReadAllText(f))! : new JsonObject { ["folder"] = folder };
    }
}
