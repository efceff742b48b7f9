using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Export.Hf;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>Shared pieces of HF-named checkpoint IO and HF-style initialisation for the model heads.</summary>
internal static class HfCheckpoint
{
    /// <summary>
    /// HF <c>_init_weights</c> for Llama: linear/embedding weights ~ N(0, <paramref name="std"/>), biases 0, norm weights 1.
    /// Draws from a CPU generator seeded with <paramref name="seed"/> in parameter registration order, so the result
    /// does not depend on the device. <paramref name="stdFor"/> can override the std per parameter name.
    /// </summary>
    public static void Init(nn.Module module, long seed, double std, Func<string, double?>? stdFor = null)
    {
        using var noGrad = torch.no_grad();
        using var gen = new torch.Generator((ulong)seed, torch.CPU);
        foreach (var (name, p) in module.named_parameters())
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.fill_(1.0);
            else if (name.EndsWith(".bias", StringComparison.Ordinal)) p.zero_();
            else
            {
                using var r = torch.empty(p.shape, ScalarType.Float32, torch.CPU).normal_(0, stdFor?.Invoke(name) ?? std, gen);
                p.copy_(r);
            }
        }
    }

    /// <summary>
    /// Copies <paramref name="weights"/> into the module's parameters by HF name. Names in <paramref name="ignore"/>
    /// are skipped if present; names in <paramref name="allowMissing"/> may be absent. Any other missing, unexpected
    /// or mis-shaped tensor fails with a message listing expected and found names and shapes.
    /// </summary>
    /// <returns>Names that were expected but absent (only from <paramref name="allowMissing"/>).</returns>
    public static IReadOnlyList<string> Load(nn.Module module, IReadOnlyDictionary<string, Tensor> weights, string source,
        IReadOnlySet<string>? ignore = null, IReadOnlySet<string>? allowMissing = null)
    {
        var expected = module.state_dict();
        var missing = expected.Keys.Where(k => !weights.ContainsKey(k) && allowMissing?.Contains(k) != true).Order(StringComparer.Ordinal).ToList();
        var unexpected = weights.Keys.Where(k => !expected.ContainsKey(k) && ignore?.Contains(k) != true).Order(StringComparer.Ordinal).ToList();
        var misShaped = expected.Where(kv => weights.TryGetValue(kv.Key, out var w) && !w.shape.SequenceEqual(kv.Value.shape))
            .Select(kv => $"{kv.Key}: expected {Shape(kv.Value)}, found {Shape(weights[kv.Key])}").Order(StringComparer.Ordinal).ToList();
        if (missing.Count + unexpected.Count + misShaped.Count > 0)
        {
            var sb = new StringBuilder($"{source}: weights do not match the model.");
            if (missing.Count > 0) sb.Append(" Missing: ").Append(string.Join(", ", missing)).Append('.');
            if (unexpected.Count > 0) sb.Append(" Unexpected: ").Append(string.Join(", ", unexpected)).Append('.');
            if (misShaped.Count > 0) sb.Append(" Wrong shape: ").Append(string.Join("; ", misShaped)).Append('.');
            sb.Append(" Expected: ").Append(List(expected)).Append(". Found: ").Append(List(weights)).Append('.');
            throw new InvalidDataException(sb.ToString());
        }
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in expected)
            if (weights.TryGetValue(name, out var w)) p.copy_(w);
        return expected.Keys.Where(k => !weights.ContainsKey(k)).ToList();
    }

    static string Shape(Tensor t) => "[" + string.Join(", ", t.shape) + "]";

    static string List(IEnumerable<KeyValuePair<string, Tensor>> d)
    {
        var items = d.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key + " " + Shape(kv.Value)).ToList();
        return items.Count <= 40 ? string.Join(", ", items) : string.Join(", ", items.Take(40)) + $", ... ({items.Count} in all)";
    }

    /// <summary>The HF <c>torch_dtype</c> string of a weight dtype.</summary>
    public static string DtypeString(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => throw new ArgumentException($"Checkpoints are saved as float32, bfloat16 or float16, not {dtype}."),
    };

    /// <summary>
    /// Writes <c>config.json</c> and the weights into <paramref name="folder"/> through a temporary folder
    /// (<see cref="HfFolder.ReplaceAtomically"/>); <paramref name="extra"/> adds files to the temporary folder (the adapter).
    /// </summary>
    public static void Save(string folder, JsonObject config, IReadOnlyDictionary<string, Tensor> weights, ScalarType dtype, long maxShardBytes,
                            Action<string>? extra = null)
    {
        HfFolder.ReplaceAtomically(folder, tmp =>
        {
            extra?.Invoke(tmp);
            HfFolder.WriteWeights(tmp, weights, dtype, maxShardBytes);
            File.WriteAllText(Path.Combine(tmp, HfFolder.ConfigFile),
                config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        });
    }

    /// <summary>
    /// Freezes every parameter of <paramref name="module"/> except those whose name starts with one of
    /// <paramref name="trainable"/> (a LoRA model's base: only adapters and heads train).
    /// </summary>
    public static void Freeze(nn.Module module, params string[] trainable)
    {
        foreach (var (name, p) in module.named_parameters())
            p.requires_grad = trainable.Any(t => name.StartsWith(t, StringComparison.Ordinal));
    }

    /// <summary>Device of a module's first parameter (CPU when it has none).</summary>
    public static Device DeviceOf(nn.Module m) => m.parameters().FirstOrDefault()?.device ?? torch.CPU;
}
