using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Rlhf.Export.Hf;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Export.Tests.Hf;

public sealed class SafeTensorsTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-st-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static Dictionary<string, Tensor> Sample() => new()
    {
        ["b.weight"] = torch.arange(6, ScalarType.Float32).reshape(2, 3) * 0.5f,
        ["a.bias"] = torch.tensor(new float[] { 1.25f, -2f }),
    };

    [Fact]
    public void HeaderBytesMatchTheSpec()
    {
        string path = Path.Combine(_dir, "x.safetensors");
        SafeTensors.Write(path, Sample());
        var bytes = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8);
        Assert.Equal(bytes.Length, 8 + (int)n + 8 + 24);            // 2 + 6 float32 values
        var json = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n).TrimEnd(' '))!.AsObject();
        Assert.Equal("pt", json["__metadata__"]!["format"]!.GetValue<string>());
        Assert.Equal(["__metadata__", "a.bias", "b.weight"], json.Select(kv => kv.Key).ToArray());
        Assert.Equal("F32", json["a.bias"]!["dtype"]!.GetValue<string>());
        Assert.Equal("[2]", json["a.bias"]!["shape"]!.ToJsonString());
        Assert.Equal("[0,8]", json["a.bias"]!["data_offsets"]!.ToJsonString());
        Assert.Equal("[2,3]", json["b.weight"]!["shape"]!.ToJsonString());
        Assert.Equal("[8,32]", json["b.weight"]!["data_offsets"]!.ToJsonString());
        int data = 8 + (int)n;
        Assert.Equal(1.25f, BitConverter.ToSingle(bytes, data));
        Assert.Equal(-2f, BitConverter.ToSingle(bytes, data + 4));
        Assert.Equal(2.5f, BitConverter.ToSingle(bytes, data + 8 + 5 * 4));
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp-*"));
    }

    [Fact]
    public void F32RoundTripIsExactAndBf16EqualsCast()
    {
        var t = new Dictionary<string, Tensor> { ["w"] = torch.randn(7, 5) };
        string p32 = Path.Combine(_dir, "f32.safetensors"), p16 = Path.Combine(_dir, "bf16.safetensors");
        SafeTensors.Write(p32, t);
        SafeTensors.Write(p16, t, ScalarType.BFloat16);
        Assert.True(Same(t["w"], SafeTensors.Read(p32)["w"]));
        var bf = SafeTensors.Read(p16)["w"];
        Assert.Equal(ScalarType.BFloat16, bf.dtype);
        Assert.True(Same(t["w"].to(ScalarType.BFloat16), bf));
        var asF32 = SafeTensors.Read(p16, ScalarType.Float32)["w"];
        Assert.Equal(ScalarType.Float32, asF32.dtype);
        Assert.True(Same(bf.to(ScalarType.Float32), asF32));
        Assert.Equal("BF16", SafeTensors.ReadHeader(p16).Tensors[0].Dtype);
    }

    [Fact]
    public void ReadsHandWrittenF16()
    {
        // header {"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}; 1.0 = 0x3C00, -2.0 = 0xC000
        string path = Path.Combine(_dir, "h.safetensors");
        WriteRaw(path, """{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}""", [0x00, 0x3C, 0x00, 0xC0]);
        var h = SafeTensors.Read(path, ScalarType.Float32)["h"];
        Assert.Equal(new[] { 1f, -2f }, h.data<float>().ToArray());
    }

    [Fact]
    public void ReadsAndWritesHandWrittenBf16()
    {
        // bf16 is the top half of float32: 1.0 = 0x3F80, -2.0 = 0xC000, 0.5 = 0x3F00, 3.140625 = 0x4049 (little-endian bytes)
        byte[] raw = [0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F, 0x49, 0x40];
        float[] values = [1f, -2f, 0.5f, 3.140625f];
        string path = Path.Combine(_dir, "b.safetensors");
        WriteRaw(path, """{"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}""", raw);
        var b = SafeTensors.Read(path)["b"];
        Assert.Equal(ScalarType.BFloat16, b.dtype);
        Assert.Equal(new long[] { 2, 2 }, b.shape);
        Assert.Equal(values, b.to(ScalarType.Float32).data<float>().ToArray());
        Assert.Equal(values, SafeTensors.Read(path, ScalarType.Float32)["b"].data<float>().ToArray());

        // our writer produces the same bytes; π rounds to nearest even bf16 (0x40490FDB -> 0x4049)
        string written = Path.Combine(_dir, "w.safetensors");
        SafeTensors.Write(written, new Dictionary<string, Tensor> { ["b"] = torch.tensor(new[] { 1f, -2f, 0.5f, MathF.PI }).reshape(2, 2) }, ScalarType.BFloat16);
        var bytes = File.ReadAllBytes(written);
        int data = 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(raw, bytes[data..]);
    }

    [Fact]
    public void ChunkedCopyHandlesTensorsLargerThanOneChunk()
    {
        int old = SafeTensors.CopyChunkBytes;
        SafeTensors.CopyChunkBytes = 12;            // 3 floats per chunk; 10 floats -> 4 chunks
        try
        {
            var t = new Dictionary<string, Tensor> { ["w"] = torch.randn(2, 5) };
            string path = Path.Combine(_dir, "c.safetensors");
            SafeTensors.Write(path, t);
            Assert.True(Same(t["w"], SafeTensors.Read(path)["w"]));
        }
        finally { SafeTensors.CopyChunkBytes = old; }
    }

    [Fact]
    public void TruncatedFileNamesFileAndTensor()
    {
        string path = Path.Combine(_dir, "t.safetensors");
        SafeTensors.Write(path, Sample());
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^4]);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path));
        Assert.Contains("truncated", e.Message);
        Assert.Contains("b.weight", e.Message);
        Assert.Contains(path, e.Message);

        File.WriteAllBytes(path, bytes[..5]);
        Assert.Contains("truncated", Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path)).Message);
    }

    [Fact]
    public void BadHeaderAndUnknownDtypeAreReported()
    {
        string path = Path.Combine(_dir, "bad.safetensors");
        WriteRaw(path, "{not json", []);
        Assert.Contains("bad safetensors header", Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path)).Message);

        WriteRaw(path, """{"q":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}""", [0]);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path));
        Assert.Contains("unknown dtype 'F8_E4M3'", e.Message);
        Assert.Contains("'q'", e.Message);

        WriteRaw(path, """{"q":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}""", [0, 0, 0, 0]);
        Assert.Contains("'q'", Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path)).Message);

        File.WriteAllBytes(path, BitConverter.GetBytes(ulong.MaxValue));
        Assert.Contains("header length", Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path)).Message);
    }

    [Fact]
    public void ShardedWriteAndReadRoundTrip()
    {
        var t = Enumerable.Range(0, 5).ToDictionary(i => $"layer.{i}.weight", _ => torch.randn(4, 4));   // 64 bytes each
        var files = HfFolder.WriteWeights(_dir, t, ScalarType.Float32, maxShardBytes: 130);
        Assert.Equal(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", HfFolder.IndexFile], files);
        Assert.False(File.Exists(Path.Combine(_dir, HfFolder.WeightsFile)));
        var map = HfFolder.ReadWeightMap(Path.Combine(_dir, HfFolder.IndexFile));
        Assert.Equal(5, map.Count);
        Assert.Equal("model-00003-of-00003.safetensors", map["layer.4.weight"]);
        var back = HfFolder.ReadWeights(_dir);
        Assert.Equal(t.Keys.Order(), back.Keys.Order());
        foreach (var (k, v) in t) Assert.True(Same(v, back[k]), k);

        // A later single-file save replaces the shards.
        HfFolder.WriteWeights(_dir, t);
        Assert.Equal([HfFolder.WeightsFile], Directory.GetFiles(_dir).Select(f => Path.GetFileName(f)).ToArray());
    }

    [Fact]
    public void ShardMissingATensorIsNamed()
    {
        var t = Enumerable.Range(0, 2).ToDictionary(i => $"w{i}", _ => torch.randn(4, 4));
        HfFolder.WriteWeights(_dir, t, maxShardBytes: 64);
        string index = Path.Combine(_dir, HfFolder.IndexFile);
        var o = JsonNode.Parse(File.ReadAllText(index))!.AsObject();
        o["weight_map"]!["w9"] = "model-00001-of-00002.safetensors";
        File.WriteAllText(index, o.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => HfFolder.ReadWeights(_dir));
        Assert.Contains("w9", e.Message);
        Assert.Contains("model-00001-of-00002.safetensors", e.Message);
    }

    static bool Same(Tensor a, Tensor b) => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static void WriteRaw(string path, string header, byte[] data)
    {
        var h = Encoding.UTF8.GetBytes(header);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes((ulong)h.Length));
        fs.Write(h);
        fs.Write(data);
    }
}
