using System.CommandLine;
using System.Text.Json.Nodes;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Cli;

/// <summary>
/// <c>rlhf merge</c>: a base HF folder plus a PEFT LoRA adapter folder (ours: a stage checkpoint's <c>adapter/</c>) into one
/// HF folder whose projections hold W + (α/r)·B A — what any Llama-family loader (transformers, <c>rlhf export</c>) reads.
/// </summary>
internal static class MergeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "The base Hugging Face model folder the adapter was trained on (a LoRA checkpoint folder holds its base: use the folder itself).", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "PEFT adapter folder (adapter_config.json + adapter_model.safetensors); default <model>/adapter." };
        var output = new Option<string>("--out") { Description = "Output folder for the merged model (config.json, model.safetensors, tokenizer files).", Required = true };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace an existing output folder." };
        var cmd = new Command("merge", "Merge a LoRA adapter (PEFT layout, task CAUSAL_LM or SEQ_CLS) into its base model: writes an HF folder with W + (alpha/r)·B·A.");
        foreach (Option o in new Option[] { model, adapter, output, overwrite }) cmd.Options.Add(o);
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            string baseFolder = r.GetValue(model)!, outFolder = r.GetValue(output)!;
            string adapterFolder = r.GetValue(adapter) ?? Path.Combine(baseFolder, PeftAdapter.FolderName);
            if (Directory.Exists(outFolder) && Directory.EnumerateFileSystemEntries(outFolder).Any() && !r.GetValue(overwrite))
                throw new IOException($"{outFolder} is not empty; pass --overwrite to replace it.");
            var n = Merge(baseFolder, adapterFolder, outFolder);
            Console.WriteLine($"merged {n} adapted projections of {adapterFolder} into {baseFolder}: {outFolder}");
            return 0;
        }));
        return cmd;
    }

    /// <summary>Loads the base, attaches the adapter read from <paramref name="adapterFolder"/> and saves merged weights; returns the adapted projections.</summary>
    internal static int Merge(string baseFolder, string adapterFolder, string outFolder)
    {
        var settings = PeftAdapter.ReadSettings(adapterFolder);
        string task = (string?)JsonNode.Parse(File.ReadAllText(Path.Combine(adapterFolder, PeftAdapter.ConfigFile)))!["task_type"] ?? "CAUSAL_LM";
        // the adapter is read from a staging folder that holds it as adapter/, as the models' AttachLora(from:) expects
        string staging = Directory.CreateTempSubdirectory("rlhf-merge").FullName;
        try
        {
            CopyFolder(adapterFolder, Path.Combine(staging, PeftAdapter.FolderName));
            int count;
            if (task == "SEQ_CLS")
            {
                using var m = LlamaForSequenceClassification.FromPretrained(baseFolder, CPU, ScalarType.Float32, newHeadSeed: 0);   // the head comes from the adapter
                count = m.AttachLora(settings, 0, baseFolder, from: staging).Items.Count;
                m.SavePretrained(outFolder);
            }
            else if (task == "CAUSAL_LM")
            {
                using var m = LlamaForCausalLM.FromPretrained(baseFolder, CPU, ScalarType.Float32);
                count = m.AttachLora(settings, 0, baseFolder, from: staging).Items.Count;
                m.SavePretrained(outFolder);
            }
            else throw new InvalidDataException($"{adapterFolder}/{PeftAdapter.ConfigFile}: task_type {task} is not CAUSAL_LM or SEQ_CLS.");
            Common.TokenizerFiles.Copy(baseFolder, outFolder);
            return count;
        }
        finally
        {
            Directory.Delete(staging, recursive: true);
        }
    }

    static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }
}
