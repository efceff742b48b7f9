using Rlhf.Training.Cli;
using Rlhf.Training.Data;
using Rlhf.Training.Tests.Sft;

namespace Rlhf.Training.Tests.Cli;

/// <summary>Short real runs of every CLI command, in-process.</summary>
[Collection("Console")]
public sealed class CliTests
{
    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (o, e) = (Console.Out, Console.Error);
        var so = new StringWriter();
        var se = new StringWriter();
        Console.SetOut(so);
        Console.SetError(se);
        try { return (RlhfCommand.Run(args), so.ToString(), se.ToString()); }
        finally { Console.SetOut(o); Console.SetError(e); }
    }

    [Fact]
    public void HelpListsEveryCommand()
    {
        var (code, output, _) = Run("--help");
        Assert.Equal(0, code);
        foreach (string c in new[] { "sft", "generate", "data" }) Assert.Contains(c, output);
        var (_, sftHelp, _) = Run("sft", "--help");
        foreach (string o in new[] { "--config", "--set", "--out", "--device", "--resume", "--overwrite", "--init-from", "--train-file", "--skip-malformed" })
            Assert.Contains(o, sftHelp);
    }

    [Fact]
    public void DataWritesTheDefaultSets()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        var (code, _, err) = Run("data", "--out", dir, "--format", "csv", "--sft-train", "20", "--sft-eval", "5", "--prompts", "7");
        Assert.True(code == 0, err);
        Assert.Equal(20, DataFiles.ReadSft(Path.Combine(dir, "sft_train.csv")).Records.Count);
        Assert.Equal(7, DataFiles.ReadPrompts(Path.Combine(dir, "ppo_prompts.csv")).Records.Count);
    }

    [Fact]
    public void SftFromAFileThenGenerate()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        Assert.Equal(0, Run("data", "--out", dir, "--sft-train", "48", "--sft-eval", "8").Code);
        string cfgFile = Path.Combine(dir, "sft.json");
        File.WriteAllText(cfgFile, $$"""
        { "model_config": {{System.Text.Json.JsonSerializer.Serialize(SftTrainerTests.TinyArchitecture())}}, "tokenizer_vocab_size": 300,
          "batch_size": 8, "max_seq_len": 48, "eval_every": 2, "checkpoint_every": 0, "threads": 1 }
        """);
        string outDir = Path.Combine(dir, "sft");
        var (code, stdout, err) = Run("sft", "--config", cfgFile, "--out", outDir, "--train-file", Path.Combine(dir, "sft_train.jsonl"),
            "--eval-file", Path.Combine(dir, "sft_eval.jsonl"), "--max-steps", "3", "--set", "lr=0.005");
        Assert.True(code == 0, err);
        Assert.Contains("\"steps\": 3", stdout);
        Assert.True(File.Exists(Path.Combine(outDir, "model.safetensors")));

        var (gcode, gout, gerr) = Run("generate", "--model", outDir, "--prompt", "The food was", "--prompt", "We stayed at",
            "--max-new-tokens", "5", "--temperature", "0", "--gold");
        Assert.True(gcode == 0, gerr);
        var lines = gout.Trim().Split('\n');
        Assert.Equal(2, lines.Length);
        Assert.StartsWith("The food was", lines[0]);
        Assert.Contains("[gold", lines[1]);
    }

    [Fact]
    public void BadInputGetsOneClearErrorLine()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        string bad = Path.Combine(dir, "bad.csv");
        File.WriteAllText(bad, "prompt,response\nhello,world\n,missing prompt\n");
        var (code, _, err) = Run("sft", "--out", Path.Combine(dir, "o"), "--train-file", bad);
        Assert.Equal(1, code);
        Assert.Contains($"{bad}:3:", err);

        var (code2, _, err2) = Run("sft", "--out", Path.Combine(dir, "o2"), "--device", "cuda");
        Assert.Equal(1, code2);
        Assert.Contains("CUDA", err2);

        var (code3, _, err3) = Run("sft", "--set", "learning_rate=1");
        Assert.Equal(1, code3);
        Assert.Contains("unknown config key 'learning_rate'", err3);
    }
}
