using Google.Protobuf;
using Rlhf.Export.Onnx;
using Rlhf.Export.Onnx.Proto;
using static TorchSharp.torch;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Export.Tests.Onnx;

public class OnnxProtoTests
{
    static GraphBuilder SmallGraph()
    {
        var b = new GraphBuilder("small");
        string x = b.Input("x", DataType.Float, "batch", 3);
        string w = b.Initializer("w", [1f, 2f, 3f, 4f, 5f, 6f], 3, 2);
        string y = b.Node("MatMul", [x, w]);
        b.AddNode("Softmax", [y], ["y"], attributes: [Attr.Int("axis", -1)]);
        b.AddNode("ReduceSum", [y, b.ConstI64(1)], ["s"], attributes: [Attr.Int("keepdims", 0)]);
        b.Output("y", DataType.Float, "batch", 2);
        b.Output("s", DataType.Float, "batch");
        b.Metadata["note"] = "test";
        return b;
    }

    [Fact]
    public void ModelRoundTripsThroughBytes()
    {
        var model = SmallGraph().ToModel();
        var parsed = ModelProto.Parser.ParseFrom(model.ToByteArray());
        Assert.Equal(model, parsed);
        Assert.Equal("batch", parsed.Graph.Input[0].Type.TensorType.Shape.Dim[0].DimParam);
        Assert.Equal(3, parsed.Graph.Input[0].Type.TensorType.Shape.Dim[1].DimValue);
        Assert.Equal(AttributeProto.Types.AttributeType.Int, parsed.Graph.Node[1].Attribute[0].Type);
        Assert.Equal(-1, parsed.Graph.Node[1].Attribute[0].I);
        Assert.Contains(parsed.OpsetImport, o => o.Domain == "" && o.Version == GraphBuilder.DefaultOpset);
        Assert.Contains(parsed.OpsetImport, o => o.Domain == GraphBuilder.MicrosoftDomain && o.Version == 1);
        Assert.Empty(OnnxChecker.Check(parsed));
    }

    [Fact]
    public void AttributesOfEveryKindRoundTrip()
    {
        var t = new TensorProto { Name = "v", DataType = (int)DataType.Float, RawData = ByteString.CopyFrom(BitConverter.GetBytes(1.5f)) };
        t.Dims.Add(1);
        var node = new NodeProto { OpType = "Foo", Domain = "com.microsoft" };
        node.Attribute.Add([Attr.Int("i", 7), Attr.Float("f", 0.25f), Attr.Ints("is", 1, -2, 3), Attr.Floats("fs", 1f, 2f),
                            Attr.String("s", "héllo"), Attr.Tensor("t", t)]);
        var parsed = NodeProto.Parser.ParseFrom(node.ToByteArray());
        Assert.Equal(node, parsed);
        Assert.Equal("héllo", parsed.Attribute[4].S.ToStringUtf8());
        Assert.Equal([1L, -2, 3], parsed.Attribute[2].Ints);
    }

    [Fact]
    public void ExternalDataFieldsRoundTrip()
    {
        var t = new TensorProto { Name = "big", DataType = (int)DataType.Float, DataLocation = TensorProto.Types.DataLocation.External };
        t.Dims.Add([4, 1024]);
        t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "model.onnx.data" });
        t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = "4096" });
        t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = "16384" });
        Assert.Equal(t, TensorProto.Parser.ParseFrom(t.ToByteArray()));
    }

    [Fact]
    public void CheckerReportsUndefinedInput()
    {
        var model = SmallGraph().ToModel();
        model.Graph.Node[0].Input[1] = "nowhere";
        var errors = OnnxChecker.Check(model);
        Assert.Contains(errors, e => e.Contains("'nowhere'") && e.Contains("MatMul"));
        Assert.Throws<InvalidDataException>(() => OnnxChecker.EnsureValid(model));
    }

    [Fact]
    public void CheckerReportsNodeUsedBeforeItsProducer()
    {
        var model = SmallGraph().ToModel();
        var first = model.Graph.Node[0];
        model.Graph.Node.RemoveAt(0);
        model.Graph.Node.Add(first);
        Assert.NotEmpty(OnnxChecker.Check(model));
    }

    [Fact]
    public void CheckerReportsMissingOpset()
    {
        var model = SmallGraph().ToModel();
        model.Graph.Node.Add(new NodeProto { OpType = "Custom", Domain = "org.example", Input = { "y" }, Output = { "z" } });
        model.OpsetImport.Remove(model.OpsetImport.Single(o => o.Domain == ""));
        var errors = OnnxChecker.Check(model);
        Assert.Contains(errors, e => e.Contains("org.example"));
        Assert.Contains(errors, e => e.Contains("default ONNX domain"));
    }

    [Fact]
    public void CheckerReportsInitializerSizeMismatch()
    {
        var model = SmallGraph().ToModel();
        model.Graph.Initializer.Single(t => t.Name == "w").Dims[0] = 4;
        Assert.Contains(OnnxChecker.Check(model), e => e.Contains("'w'") && e.Contains("[4, 2]"));
    }

    [Fact]
    public void CheckerReportsUndefinedGraphOutputAndDuplicateValue()
    {
        var model = SmallGraph().ToModel();
        model.Graph.Output.Add(new ValueInfoProto { Name = "ghost", Type = model.Graph.Output[0].Type });
        model.Graph.Node[2].Output[0] = "y";
        var errors = OnnxChecker.Check(model);
        Assert.Contains(errors, e => e.Contains("'ghost'"));
        Assert.Contains(errors, e => e.Contains("'y'") && e.Contains("more than once"));
    }

    [Fact]
    public void BuilderRejectsDuplicateNamesAndGeneratesUniqueOnes()
    {
        var b = new GraphBuilder("g");
        b.Input("x", DataType.Float, 2);
        Assert.Throws<ArgumentException>(() => b.Initializer("x", [1f, 2f], 2));
        var names = new HashSet<string>();
        for (int i = 0; i < 5; i++) Assert.True(names.Add(b.UniqueName("x")));
        Assert.DoesNotContain("x", names);
        Assert.Throws<ArgumentException>(() => b.AddNode("Foo", ["x"], ["z"], domain: "org.unknown"));
    }

    [Fact]
    public void Bf16TensorInitializerIsStoredAsFp32()
    {
        var b = new GraphBuilder("g");
        var src = tensor(new float[] { 1f, -2.5f, 3.25f, 0.1f, 7f, 8f }, [2, 3]).to(bfloat16);
        b.Initializer("w", src, transpose: true);
        var init = b.ToModel().Graph.Initializer.Single();
        Assert.Equal((int)DataType.Float, init.DataType);
        Assert.Equal([3L, 2], init.Dims);
        float[] got = new float[6];
        Buffer.BlockCopy(init.RawData.ToByteArray(), 0, got, 0, 24);
        float[] want = src.to(float32).t().contiguous().data<float>().ToArray();
        Assert.Equal(want, got);
    }

    [Fact]
    public void SaveWritesAlignedExternalDataAndReplacesAtomically()
    {
        string dir = TinyModel.TempFolder("save");
        try
        {
            var b = new GraphBuilder("g");
            string x = b.Input("x", DataType.Float, "n", 300);
            string w1 = b.Initializer("w1", Enumerable.Range(0, 300 * 5).Select(i => (float)i).ToArray(), 300, 5); // 6000 bytes: external
            string w2 = b.Initializer("w2", [1f, 2f, 3f, 4f, 5f], 5);                                              // inline
            string w3 = b.Initializer("w3", new float[300 * 5], 300, 5);                                           // external
            b.AddNode("Add", [b.Node("MatMul", [x, b.Node("Add", [w1, w3])]), w2], ["y"]);
            b.Output("y", DataType.Float, "n", 5);
            var r = b.Save(dir);
            Assert.True(File.Exists(r.ModelPath) && File.Exists(r.DataPath));
            Assert.Equal(2, r.ExternalInitializers);
            var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(r.ModelPath));
            Assert.Empty(OnnxChecker.Check(model));
            var offsets = model.Graph.Initializer.Where(t => t.DataLocation == TensorProto.Types.DataLocation.External)
                .Select(t => long.Parse(t.ExternalData.Single(e => e.Key == "offset").Value)).ToArray();
            Assert.All(offsets, o => Assert.Equal(0, o % GraphBuilder.ExternalAlignment));
            Assert.Equal([0L, 8192], offsets);
            Assert.Equal(8192 + 6000, new FileInfo(r.DataPath!).Length);

            // Saving again into the existing folder replaces both files and leaves no temp folder behind.
            File.WriteAllText(Path.Combine(dir, "keep.txt"), "other files stay");
            b.Save(dir);
            Assert.Equal(["keep.txt", "model.onnx", "model.onnx.data"], Directory.GetFileSystemEntries(dir).Select(p => Path.GetFileName(p)!).Order().ToArray());
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }
}
