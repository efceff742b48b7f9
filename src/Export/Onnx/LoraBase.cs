using System.Security.Cryptography;
using System.Text;
using TorchSharp;

namespace Rlhf.Export.Onnx;

/// <summary>
/// The identity of the base model an adapter applies to: lower-case hex SHA-256 over the base's weights (HF names in
/// ordinal order, each name's UTF-8 bytes followed by its values as little-endian float32). A graph exported with LoRA
/// inputs records it as <c>rlhf.lora_base</c>; an adapter push states the base it was trained on, and an engine or
/// replica refuses an adapter made for another base.
/// </summary>
public static class LoraBase
{
    /// <summary>Metadata key of a LoRA-input graph's base fingerprint (the reader's is Inference's <c>PolicyWeightFormat.LoraBaseKey</c>).</summary>
    public const string MetadataKey = "rlhf.lora_base";

    /// <summary>The fingerprint of <paramref name="weights"/> (HF name -> tensor, any float dtype, any device).</summary>
    public static string Fingerprint(IReadOnlyDictionary<string, torch.Tensor> weights)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var _ = torch.no_grad();
        foreach (var (name, t) in weights.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            sha.AppendData(Encoding.UTF8.GetBytes(name));
            using var f = t.detach().to(torch.ScalarType.Float32).cpu().contiguous();
            sha.AppendData(f.bytes);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}
