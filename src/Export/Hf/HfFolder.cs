using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Export.Hf;

/// <summary>
/// Weights of a Hugging Face model folder: <c>model.safetensors</c>, or shards
/// <c>model-00001-of-0000N.safetensors</c> listed by <c>model.safetensors.index.json</c> (<c>weight_map</c>: name -> file).
/// </summary>
public static class HfFolder
{
    /// <summary>Single-file weights name.</summary>
    public const string WeightsFile = "model.safetensors";
    /// <summary>Shard index name.</summary>
    public const string IndexFile = "model.safetensors.index.json";
    /// <summary>Config file name.</summary>
    public const string ConfigFile = "config.json";

    /// <summary>True when the folder holds weights in either layout.</summary>
    public static bool HasWeights(string folder) =>
        File.Exists(Path.Combine(folder, IndexFile)) || File.Exists(Path.Combine(folder, WeightsFile));

    /// <summary>
    /// Reads all weights of a folder (sharded when the index exists, else <c>model.safetensors</c>).
    /// </summary>
    /// <param name="dtype">Convert floating tensors to this dtype; null keeps the stored dtype.</param>
    /// <param name="device">Target device; null means CPU.</param>
    public static Dictionary<string, Tensor> ReadWeights(string folder, ScalarType? dtype = null, Device? device = null)
    {
        string index = Path.Combine(folder, IndexFile), single = Path.Combine(folder, WeightsFile);
        if (File.Exists(index)) return ReadSharded(index, dtype, device);
        if (File.Exists(single)) return SafeTensors.Read(single, dtype, device);
        throw new FileNotFoundException($"{folder}: no {WeightsFile} or {IndexFile} (is this a Hugging Face model folder with safetensors weights?).");
    }

    /// <summary>Reads the shards named by an index file; every name of the weight_map must be in its shard.</summary>
    public static Dictionary<string, Tensor> ReadSharded(string indexPath, ScalarType? dtype = null, Device? device = null)
    {
        var map = ReadWeightMap(indexPath);
        string folder = Path.GetDirectoryName(Path.GetFullPath(indexPath))!;
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var group in map.GroupBy(kv => kv.Value, kv => kv.Key, StringComparer.Ordinal))
            {
                string file = Path.Combine(folder, group.Key);
                if (!File.Exists(file))
                    throw new FileNotFoundException($"{indexPath}: shard '{group.Key}' (holding e.g. '{group.First()}') does not exist.", file);
                var names = group.ToHashSet(StringComparer.Ordinal);
                var part = SafeTensors.Read(file, dtype, device, names.Contains);
                foreach (var (k, v) in part) result[k] = v;
                var absent = names.Where(n => !part.ContainsKey(n)).Order(StringComparer.Ordinal).ToList();
                if (absent.Count > 0)
                    throw new InvalidDataException($"{file}: tensor(s) listed in {IndexFile} are missing from the shard: {string.Join(", ", absent)}.");
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>The <c>weight_map</c> of an index file (tensor name -> shard file name).</summary>
    public static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        try
        {
            var o = JsonNode.Parse(File.ReadAllText(indexPath))?.AsObject() ?? throw new InvalidDataException("empty");
            var wm = o["weight_map"] as JsonObject ?? throw new InvalidDataException("missing 'weight_map'");
            return wm.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<string>(), StringComparer.Ordinal);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or InvalidDataException or NullReferenceException)
        { throw new InvalidDataException($"{indexPath}: bad safetensors index ({e.Message})."); }
    }

    /// <summary>
    /// Writes weights into <paramref name="folder"/>: one <c>model.safetensors</c> when they fit in
    /// <paramref name="maxShardBytes"/>, else HF-named shards plus the index. Each file is written atomically;
    /// weight files of the other layout left from an earlier save are removed afterwards.
    /// </summary>
    /// <param name="dtype">Stored dtype of floating tensors (F32/BF16/F16); null keeps each tensor's dtype.</param>
    /// <returns>The weight file names written.</returns>
    public static IReadOnlyList<string> WriteWeights(string folder, IReadOnlyDictionary<string, Tensor> tensors,
        ScalarType? dtype = null, long maxShardBytes = long.MaxValue)
    {
        if (maxShardBytes <= 0) throw new ArgumentOutOfRangeException(nameof(maxShardBytes), "Shard size must be positive.");
        Directory.CreateDirectory(folder);
        var names = tensors.Keys.Order(StringComparer.Ordinal).ToList();
        var shards = new List<List<string>>();
        long current = 0, total = 0;
        foreach (var n in names)
        {
            long b = SafeTensors.StoredBytes(tensors[n], dtype);
            if (shards.Count == 0 || (current + b > maxShardBytes && current > 0)) { shards.Add([]); current = 0; }
            shards[^1].Add(n);
            current += b;
            total += b;
        }
        var written = new List<string>();
        if (shards.Count <= 1)
        {
            SafeTensors.Write(Path.Combine(folder, WeightsFile), tensors, dtype);
            written.Add(WeightsFile);
        }
        else
        {
            var weightMap = new JsonObject();
            for (int i = 0; i < shards.Count; i++)
            {
                string file = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
                SafeTensors.Write(Path.Combine(folder, file), shards[i].ToDictionary(n => n, n => tensors[n]), dtype);
                foreach (var n in shards[i]) weightMap[n] = file;
                written.Add(file);
            }
            var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = weightMap };
            AtomicFile.WriteAllText(Path.Combine(folder, IndexFile), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            written.Add(IndexFile);
        }
        RemoveStaleWeights(folder, written);
        return written;
    }

    static void RemoveStaleWeights(string folder, IReadOnlyList<string> keep)
    {
        var keepSet = keep.ToHashSet(StringComparer.Ordinal);
        foreach (var f in Directory.EnumerateFiles(folder))
        {
            string name = Path.GetFileName(f);
            bool isWeights = name == IndexFile || (name.StartsWith("model", StringComparison.Ordinal) && name.EndsWith(".safetensors", StringComparison.Ordinal));
            if (isWeights && !keepSet.Contains(name)) File.Delete(f);
        }
    }

    /// <summary>
    /// Fills a new sibling temporary folder with <paramref name="fill"/>, then moves it into place: a plain rename
    /// when <paramref name="folder"/> does not exist, else each file is renamed over its old version (other files,
    /// e.g. tokenizer files, are kept; weight files of the other layout are removed; a sub-folder replaces its old version
    /// whole). A failure leaves the target untouched.
    /// </summary>
    public static void ReplaceAtomically(string folder, Action<string> fill)
    {
        string full = Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar);
        string parent = Path.GetDirectoryName(full) ?? ".";
        Directory.CreateDirectory(parent);
        string tmp = Path.Combine(parent, "." + Path.GetFileName(full) + ".tmp-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(tmp);
        try
        {
            fill(tmp);
            if (!Directory.Exists(full))
            {
                Directory.Move(tmp, full);
                return;
            }
            var files = Directory.GetFiles(tmp).Select(Path.GetFileName).OfType<string>().ToList();
            // Weights first, config last: a reader never sees a new config with old weights of another shape.
            foreach (var name in files.OrderBy(n => n == ConfigFile ? 1 : 0))
                File.Move(Path.Combine(tmp, name), Path.Combine(full, name), overwrite: true);
            if (files.Any(n => n == WeightsFile || n == IndexFile))
                RemoveStaleWeights(full, files);
            foreach (var dir in Directory.GetDirectories(tmp))   // sub-folders (a LoRA adapter/) replace their old version whole
            {
                string target = Path.Combine(full, Path.GetFileName(dir));
                if (Directory.Exists(target)) Directory.Delete(target, recursive: true);
                Directory.Move(dir, target);
            }
            Directory.Delete(tmp, recursive: true);
        }
        catch
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            throw;
        }
    }
}
