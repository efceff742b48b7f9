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

    /// <summary>The names listed under "Commands:" in a help text (one per line, indented, then the description).</summary>
    static string[] ListedCommands(string help) =>
        [.. help[(help.IndexOf("Commands:", StringComparison.Ordinal) + 9)..].Split('\n')
            .Select(l => System.Text.RegularExpressions.Regex.Match(l, @"^  (\S+)\s{2,}\S").Groups[1].Value).Where(n => n.Length > 0)];

    [Fact]
    public void HelpListsEveryCommand()
    {
        // the commands of docs/cli.md: twelve top-level, `rm eval`, the seven `bench` tools, the two `serve` replicas and the training server
        var (code, output, _) = Run("--help");
        Assert.Equal(0, code);
        string[] commands = ListedCommands(output);
        Assert.Equal(["sft", "rm", "ppo", "dpo", "pipeline", "compare", "generate", "data", "score", "export", "merge", "bench", "serve"], commands);
        Assert.Equal(["eval"], ListedCommands(Run("rm", "--help").Out));
        Assert.Equal(["rollout", "reward", "train"], ListedCommands(Run("serve", "--help").Out));
        Assert.Equal(["export", "rollout", "serve", "rm", "train", "ppo", "memory"], ListedCommands(Run("bench", "--help").Out));
        // docs/cli.md has a section for every command and names every subcommand
        string cliPage = Rlhf.Training.Tests.Common.DocsPages.Docs("cli.md");
        foreach (string c in commands)
        {
            Assert.True(cliPage.Contains($"\n## `rlhf {c}", StringComparison.Ordinal), $"docs/cli.md has no section for rlhf {c}");
            string help = Run(c, "--help").Out;
            foreach (string sub in help.Contains("Commands:", StringComparison.Ordinal) ? ListedCommands(help) : [])
                Assert.True(cliPage.Contains($"`rlhf {c} {sub}`", StringComparison.Ordinal), $"docs/cli.md does not name rlhf {c} {sub}");
        }

        string[] stage = ["--config", "--set", "--out", "--device", "--threads", "--seed", "--resume", "--overwrite"];
        var (_, sftHelp, _) = Run("sft", "--help");
        foreach (string o in stage.Concat(["--init-from", "--train-file", "--eval-file", "--skip-malformed", "--epochs", "--max-steps", "--lr", "--batch-size"]))
            Assert.Contains(o, sftHelp);
        foreach (string c in new[] { "rm", "ppo", "pipeline" })
        {
            string help = Run(c, "--help").Out;
            foreach (string o in stage) Assert.True(help.Contains(o, StringComparison.Ordinal), $"rlhf {c} --help lacks {o}");
        }
        foreach (string o in new[] { "--sft-from", "--rm-from" }) Assert.Contains(o, Run("pipeline", "--help").Out);
        foreach (string o in new[] { "--engine", "--temperature", "--top-k", "--top-p", "--seed", "--max-new-tokens", "--prompt", "--prompts", "--gold" })
            Assert.Contains(o, Run("generate", "--help").Out);
        foreach (string o in new[] { "--kind", "--graph" }) Assert.Contains(o, Run("export", "--help").Out);
    }

    /// <summary>Writes a tiny SFT config file (the file layer of the settings; <paramref name="extra"/> adds keys) and returns its path.</summary>
    static string TinySftConfig(string dir, string extra = "")
    {
        string cfgFile = Path.Combine(dir, $"sft{Guid.NewGuid():N}.json");
        File.WriteAllText(cfgFile, $$"""
        { "model_config": {{System.Text.Json.JsonSerializer.Serialize(SftTrainerTests.TinyArchitecture())}}, "tokenizer_vocab_size": 300,
          "batch_size": 8, "max_seq_len": 48, "eval_every": 100, "checkpoint_every": 0, "threads": 1, "sample_count": 0 {{extra}} }
        """);
        return cfgFile;
    }

    [Fact]
    public void SkipMalformedSkipsAndCountsTheBadRows()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        string train = Path.Combine(dir, "train.csv");
        var good = Enumerable.Range(0, 16).Select(i => $"review {i} says,the food was good number {i}.");
        // 3 bad rows: an empty prompt, an empty response, a missing column
        File.WriteAllLines(train, ["prompt,response", .. good.Take(5), ",no prompt", .. good.Skip(5).Take(6), "no response,", "one column only", .. good.Skip(11)]);
        string outDir = Path.Combine(dir, "o");
        var (code, stdout, err) = Run("sft", "--config", TinySftConfig(dir), "--out", outDir, "--train-file", train, "--skip-malformed", "--max-steps", "100");
        Assert.True(code == 0, err);
        Assert.Contains("SFT data: 16 train, 0 eval demonstrations (3 malformed rows skipped)", err);
        Assert.Contains("\"steps\": 2", stdout);                              // 16 good rows / batch 8, one epoch
        Assert.Contains("\"skip_malformed\": true", File.ReadAllText(Path.Combine(outDir, "sft_config.json")));

        var (code2, _, err2) = Run("sft", "--config", TinySftConfig(dir), "--out", Path.Combine(dir, "o2"), "--train-file", train);
        Assert.Equal(1, code2);
        Assert.Contains($"{train}:7:", err2);                                      // without the flag: the first bad row, by line
    }

    [Fact]
    public void ConfigLayersDefaultsFileSetTypedAndTheWrittenConfig()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        Assert.Equal(0, Run("data", "--out", dir, "--format", "csv", "--sft-train", "16", "--sft-eval", "4").Code);
        // file: lr, decay, warmup_steps, out; --set: lr (over the file), weight_decay, out; typed: --lr and --out win over both
        string file = TinySftConfig(dir, $$""", "lr": 0.01, "decay": "linear", "warmup_steps": 3, "out": {{System.Text.Json.JsonSerializer.Serialize(Path.Combine(dir, "from-file"))}}""");
        string outDir = Path.Combine(dir, "typed");
        var (code, _, err) = Run("sft", "--config", file, "--set", "lr=0.02", "--set", "weight_decay=0.25", "--set", $"out=\"{Path.Combine(dir, "from-set")}\"",
            "--lr", "0.005", "--out", outDir, "--train-file", Path.Combine(dir, "sft_train.csv"), "--max-steps", "1");
        Assert.True(code == 0, err);
        Assert.False(Directory.Exists(Path.Combine(dir, "from-file")));
        Assert.False(Directory.Exists(Path.Combine(dir, "from-set")));

        var written = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "sft_config.json")))!.AsObject();
        Assert.Equal(0.005, written["lr"]!.GetValue<double>());                   // typed > --set > file
        Assert.Equal(0.25, written["weight_decay"]!.GetValue<double>());          // --set > default
        Assert.Equal("linear", written["decay"]!.GetValue<string>());             // file > default
        Assert.Equal(3, written["warmup_steps"]!.GetValue<int>());
        Assert.Equal(1, written["max_steps"]!.GetValue<int>());
        Assert.Equal(outDir, written["out"]!.GetValue<string>());
        var defaults = new Rlhf.Training.Sft.SftConfig();
        Assert.Equal(defaults.Beta2, written["beta2"]!.GetValue<double>());     // untouched keys keep their defaults
        Assert.Equal(defaults.GradClip, written["grad_clip"]!.GetValue<double>());

        // the written config is a complete config file: it reproduces the run's settings
        var back = Rlhf.Training.Common.ConfigLoader.Load<Rlhf.Training.Sft.SftConfig>(Path.Combine(outDir, "sft_config.json"), []);
        Assert.Equal(System.Text.Json.Nodes.JsonNode.Parse(Rlhf.Training.Common.ConfigLoader.ToJson(back))!.ToJsonString(), written.ToJsonString());
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
