using Rlhf.Export.Onnx;
using Rlhf.Training.Cli;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;
using static TorchSharp.torch;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Training.Tests.Cli;

/// <summary>Bad inputs the files a table of user mistakes needs: data files, configs, model folders, ONNX graphs.</summary>
public sealed class BadInputs : IDisposable
{
    public string Dir { get; } = Directory.CreateTempSubdirectory("rlhf-cli-errors-").FullName;

    public BadInputs()
    {
        File.WriteAllText(P("bad.csv"), "prompt,response\nhello,world\n,missing prompt\n");
        File.WriteAllText(P("bad.jsonl"), "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\", \n");
        File.WriteAllText(P("good_sft.csv"), "prompt,response\nThe food was,great.\nWe stayed at,a nice hotel.\n");
        File.WriteAllText(P("bad_prompts.csv"), "text\nThe food was\n");
        File.WriteAllText(P("responses.csv"), "prompt,response\nThe food was,great.\n");
        File.WriteAllText(P("bad_config.json"), "{ \"lr\": 0.1, ");
        File.WriteAllText(P("unknown_key.json"), "{ \"learning_rate\": 0.1 }");
        Directory.CreateDirectory(P("full"));
        File.WriteAllText(P("full/keep.txt"), "a previous run");
        Directory.CreateDirectory(P("no_config"));
        File.WriteAllText(P("no_config/model.safetensors"), "");
        using (var lm = LlamaForCausalLM.Create(TinyModels.Config(), CPU, ScalarType.Float32, 1))
            lm.SavePretrained(P("no_tokenizer"));

        // a sequence classifier whose inputs are not named as a reward model's (and no reward_spec.json maps them)
        var b = new GraphBuilder("wrong_signature");
        b.AddNode("Cast", [b.Input("ids", DataType.Int64, "batch", "seq")], ["logits"], "", [Attr.Int("to", (long)DataType.Float)]);
        b.Output("logits", DataType.Float, "batch", "seq");
        b.Save(P("wrong_signature"));
        File.WriteAllLines(P("wrong_signature/vocab.txt"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"]);
        // user data and chat models that do not fit: an unknown row shape, a conversation without an assistant turn, a
        // rope scaling we do not have, a chat template the renderer refuses, a chat file for a model without a template
        File.WriteAllText(P("unknown_shape.jsonl"), "{\"question\": \"a\", \"answer\": \"b\"}\n");
        File.WriteAllText(P("no_assistant.jsonl"), "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
        File.WriteAllText(P("chat.jsonl"), "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n");
        foreach (string folder in new[] { "yarn_model", "bad_template_model" })
        {
            Rlhf.Training.Data.Tokenizer.BpeTrainer.Train(["hi hello there"], new() { VocabSize = 300 }).Save(P(folder));
            File.WriteAllText(P($"{folder}/config.json"), """
                {"model_type": "llama", "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "max_position_embeddings": 64, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
                """);
        }
        var tc = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(P("bad_template_model/tokenizer_config.json")))!;
        tc["chat_template"] = "{{ messages[0].content | no_such_filter }}";
        File.WriteAllText(P("bad_template_model/tokenizer_config.json"), tc.ToJsonString());
        Directory.CreateDirectory(P("not_onnx"));
        File.WriteAllText(P("not_onnx/model.onnx"), "this is not a protobuf");
        File.WriteAllLines(P("not_onnx/vocab.txt"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"]);
    }

    public string P(string name) => Path.Combine(Dir, name);

    public void Dispose()
    {
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
    }
}

/// <summary>
/// Every user mistake ends with exit code 1 (2 for a wrong command line), exactly one <c>error: …</c> line on stderr
/// (the last one; file:line where there is one), no stack trace, and no output folder left behind.
/// </summary>
[Collection("Console")]
public sealed class CliErrorTests(BadInputs inputs) : IClassFixture<BadInputs>
{
    /// <summary>(name, arguments with {dir} for the inputs folder and {out} for a fresh output path, exit code, text the error must hold).</summary>
    public static TheoryData<string, string[], int, string> Cases => new()
    {
        { "malformed CSV row", ["sft", "--train-file", "{dir}/bad.csv", "--out", "{out}"], 1, "bad.csv:3: empty prompt" },
        { "malformed JSONL line", ["sft", "--train-file", "{dir}/bad.jsonl", "--out", "{out}"], 1, "bad.jsonl:2:" },
        { "missing data file", ["sft", "--train-file", "{dir}/nope.csv", "--out", "{out}"], 1, "nope.csv" },
        { "unknown --set key", ["sft", "--set", "learning_rate=1", "--out", "{out}"], 1, "unknown config key 'learning_rate'" },
        { "out-of-range value", ["sft", "--set", "lr=-1", "--out", "{out}"], 1, "lr must be > 0" },
        { "wrongly typed value", ["sft", "--set", "epochs=many", "--out", "{out}"], 1, "SftConfig" },
        { "config file not JSON", ["sft", "--config", "{dir}/bad_config.json", "--out", "{out}"], 1, "bad_config.json" },
        { "config file missing", ["sft", "--config", "{dir}/nope.json", "--out", "{out}"], 1, "nope.json" },
        { "unknown key in config file", ["sft", "--config", "{dir}/unknown_key.json", "--out", "{out}"], 1, "learning_rate" },
        { "CUDA on the CPU build", ["sft", "--device", "cuda", "--train-file", "{dir}/good_sft.csv", "--out", "{out}"], 1, "CUDA" },
        { "model folder without tokenizer", ["sft", "--init-from", "{dir}/no_tokenizer", "--train-file", "{dir}/good_sft.csv", "--out", "{out}"], 1, "no_tokenizer" },
        { "model folder without config.json", ["sft", "--init-from", "{dir}/no_config", "--train-file", "{dir}/good_sft.csv", "--out", "{out}"], 1, "no_config" },
        { "resume without a checkpoint", ["sft", "--resume", "--train-file", "{dir}/good_sft.csv", "--out", "{out}"], 1, "no checkpoint" },
        { "unknown dataset shape", ["sft", "--train-file", "{dir}/unknown_shape.jsonl", "--out", "{out}"], 1, "unknown_shape.jsonl:1:" },
        { "conversation without an assistant turn", ["sft", "--train-file", "{dir}/no_assistant.jsonl", "--out", "{out}"], 1, "no_assistant.jsonl:1:" },
        { "conversations for a fresh model", ["sft", "--train-file", "{dir}/chat.jsonl", "--out", "{out}"], 1, "init_from" },
        { "conversations for a model without a chat template", ["sft", "--init-from", "{dir}/no_tokenizer", "--train-file", "{dir}/chat.jsonl", "--out", "{out}"], 1, "no_tokenizer has none" },
        { "a chat template the renderer refuses", ["sft", "--init-from", "{dir}/bad_template_model", "--train-file", "{dir}/chat.jsonl", "--out", "{out}"], 1, "chat_template" },
        { "unsupported rope scaling", ["sft", "--init-from", "{dir}/yarn_model", "--train-file", "{dir}/good_sft.csv", "--out", "{out}"], 1, "yarn" },
        { "unknown option", ["sft", "--learning-rate", "1"], 2, "--learning-rate" },
        { "no command", [], 2, "command" },
        { "required option missing", ["generate", "--prompt", "hi"], 2, "--model" },
        { "generate: missing model folder", ["generate", "--model", "{dir}/nope", "--prompt", "hi"], 1, "nope" },
        { "generate: folder without tokenizer", ["generate", "--model", "{dir}/no_tokenizer", "--prompt", "hi"], 1, "no_tokenizer" },
        { "rm: missing SFT folder", ["rm", "--sft-model", "{dir}/nope", "--out", "{out}"], 1, "nope" },
        { "rm: k out of range", ["rm", "--k", "1", "--out", "{out}"], 1, "k must be in 2..9" },
        { "rm: int8 sampling on another engine", ["rm", "--set", "engine=torch", "--set", "rollout_precision=int8", "--out", "{out}"], 1, "rollout_precision int8 is built into the ort engine's graph" },
        { "rm eval: missing preference file", ["rm", "eval", "--model", "{dir}/no_tokenizer", "--input", "{dir}/nope.csv"], 1, "nope.csv" },
        { "ppo: missing SFT folder", ["ppo", "--sft-model", "{dir}/nope", "--out", "{out}"], 1, "nope" },
        { "ppo: missing RM folder", ["ppo", "--sft-model", "{dir}/no_tokenizer", "--rm-model", "{dir}/nope_rm", "--out", "{out}"], 1, "nope_rm: no reward-model folder" },
        { "ppo: minibatch does not divide", ["ppo", "--set", "mini_batch=5", "--out", "{out}"], 1, "multiple of mini_batch" },
        { "ppo: prompts file without prompt column", ["ppo", "--prompts", "{dir}/bad_prompts.csv", "--out", "{out}"], 1, "bad_prompts.csv" },
        { "pipeline: stage key the pipeline owns", ["pipeline", "--set", "ppo.seed=3", "--out", "{out}"], 1, "ppo.seed is set by the pipeline" },
        { "pipeline: unknown stage key", ["pipeline", "--set", "rm.bogus=1", "--out", "{out}"], 1, "rm.bogus" },
        { "score: bad ONNX signature", ["score", "--reward-model", "{dir}/wrong_signature", "--input", "{dir}/responses.csv", "--out", "{out}/scores.csv"], 1, "input_ids" },
        { "score: not an ONNX file", ["score", "--reward-model", "{dir}/not_onnx", "--input", "{dir}/responses.csv", "--out", "{out}/scores.csv"], 1, "model.onnx" },
        { "score: missing reward model", ["score", "--reward-model", "{dir}/nope", "--input", "{dir}/responses.csv", "--out", "{out}/scores.csv"], 1, "nope" },
        { "export: missing model folder", ["export", "--model", "{dir}/nope", "--out", "{out}"], 1, "nope" },
        { "export: unknown kind", ["export", "--model", "{dir}/no_tokenizer", "--kind", "critic", "--out", "{out}"], 1, "critic" },
        { "data: unknown format", ["data", "--format", "xml", "--out", "{out}"], 1, "xml" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void UserMistakeGivesOneErrorLineAndNoOutput(string name, string[] args, int code, string expected)
    {
        string outDir = Path.Combine(Directory.CreateTempSubdirectory("rlhf-cli-out-").FullName, "out");
        string[] argv = [.. args.Select(a => a.Replace("{dir}", inputs.Dir, StringComparison.Ordinal).Replace("{out}", outDir, StringComparison.Ordinal))];
        var (exit, _, err) = CliRun.Run(argv);

        Assert.True(exit == code, $"{name}: exit {exit}, expected {code}; stderr: {err}");
        string[] lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Count(l => l.StartsWith("error: ", StringComparison.Ordinal)) == 1, $"{name}: not exactly one error line: {err}");
        Assert.StartsWith("error: ", lines[^1]);
        Assert.DoesNotContain(lines, l => l.StartsWith("at ", StringComparison.Ordinal));
        Assert.DoesNotContain("internal error", lines[^1]);
        Assert.Contains(expected, lines[^1]);
        Assert.False(Directory.Exists(outDir), $"{name}: left {outDir} behind");
    }

    [Fact]
    public void AnExistingOutputFolderIsRefusedAndLeftAsItWas()
    {
        var (exit, _, err) = CliRun.Run("sft", "--train-file", inputs.P("good_sft.csv"), "--out", inputs.P("full"));
        Assert.Equal(1, exit);
        Assert.StartsWith("error: ", err);
        Assert.Contains("not empty", err);
        Assert.Equal("a previous run", File.ReadAllText(inputs.P("full/keep.txt")));
    }

    [Fact]
    public void VerboseAddsTheStackTrace()
    {
        var (exit, _, err) = CliRun.Run("sft", "--verbose", "--train-file", inputs.P("bad.csv"), "--out", Path.Combine(inputs.Dir, "verbose-out"));
        Assert.Equal(1, exit);
        Assert.StartsWith($"error: {inputs.P("bad.csv")}:3:", err);
        Assert.Contains("DataFileException", err);
        Assert.Contains("   at ", err);
    }

    [Fact]
    public void AProgramFaultIsNamedAsOne()
    {
        string line = Rlhf.Training.Common.ErrorLines.For(new InvalidCastException("Unable to cast\nobject"));
        Assert.Equal("error: internal error (InvalidCastException): Unable to cast object (rerun with --verbose for the stack trace)", line);
        Assert.Equal("error: a: b", Rlhf.Training.Common.ErrorLines.For(new AggregateException(new InvalidDataException("a:\r\n  b"))));
    }
}

/// <summary>Runs the CLI in-process with stdout and stderr captured.</summary>
internal static class CliRun
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (o, e) = (Console.Out, Console.Error);
        var so = new StringWriter();
        var se = new StringWriter();
        Console.SetOut(so);
        Console.SetError(se);
        try { return (RlhfCommand.Run(args), so.ToString(), se.ToString()); }
        finally { Console.SetOut(o); Console.SetError(e); }
    }
}
