using System.Buffers.Binary;
using System.Text;
using Google.Protobuf;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.Sft;
using Rlhf.Training.Tests.Ppo;
using Rlhf.Training.Tests.Sft;

namespace Rlhf.Training.Tests.Common;

/// <summary>
/// The stages' TensorBoard event files, read back with a reader written here rather than the writer's code: TFRecord
/// framing (uint64 length, masked CRC32C of the length, data, masked CRC32C of the data) and the <c>Event</c> protobuf
/// decoded field by field with <see cref="CodedInputStream"/>.
/// </summary>
public sealed class TensorBoardTests
{
    /// <summary>One decoded <c>Event</c>: wall_time (1), step (2), file_version (3), and summary (5) values as (tag, simple_value).</summary>
    sealed record TfEvent(double WallTime, long Step, string? FileVersion, List<(string Tag, float Value)> Values);

    [Fact]
    public void Crc32CMatchesTheStandardCheckValue() =>
        Assert.Equal(0xE3069283u, Crc32C(Encoding.ASCII.GetBytes("123456789")));   // CRC-32C (Castagnoli) of "123456789"

    [Fact]
    public void TheReaderRejectsARecordWhoseBytesChanged()
    {
        string file = Assert.Single(EventFiles(SftTrainerTests.Shared.Config.Out));
        byte[] bytes = File.ReadAllBytes(file);
        int lastValue = bytes.Length - 4 - 4;                       // the last record's simple_value, just before its data CRC
        bytes[lastValue] ^= 0x01;
        string corrupt = Path.Combine(Directory.CreateTempSubdirectory().FullName, Path.GetFileName(file));
        File.WriteAllBytes(corrupt, bytes);
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => ReadEvents(corrupt));
    }

    [Fact]
    public void EveryStageLogsEveryMetricsRowAsScalarsAtItsStep()
    {
        var (sft, rm) = PpoTrainerTests.Models.Value;
        var ppo = PpoTrainerTests.Tiny() with { BestOfN = [1] };
        PpoTrainer.Train(ppo, new RunControl { Progress = false });
        foreach (string stage in new[] { sft, rm, ppo.Out })
        {
            var files = EventFiles(stage);
            Assert.Single(files);
            AssertHoldsEveryRow(stage, files);
        }
    }

    [Fact]
    public void AResumedStageAddsAFileWithOnlyTheStepsAfterItsCheckpoint()
    {
        var cfg = SftTrainerTests.Tiny(Path.Combine(Directory.CreateTempSubdirectory().FullName, "sft"));
        StopAfter.Step(2, c => SftTrainer.Run(cfg, c));
        Assert.Equal([1L, 2L], ReadEvents(Assert.Single(EventFiles(cfg.Out))).Skip(1).Select(e => e.Step).Distinct());
        SftTrainer.Run(cfg, new RunControl { Progress = false, Resume = true });
        var files = EventFiles(cfg.Out);
        Assert.Equal(2, files.Length);
        Assert.Equal([3L, 4L], ReadEvents(files[1]).Skip(1).Select(e => e.Step).Distinct());
        AssertHoldsEveryRow(cfg.Out, files);
    }

    /// <summary>The event files in <c>&lt;stage&gt;/tensorboard</c>, oldest first (their names start with the creation time).</summary>
    static string[] EventFiles(string stage) =>
        [.. Directory.GetFiles(Path.Combine(stage, "tensorboard"), "events.out.tfevents.*").Order(StringComparer.Ordinal)];

    /// <summary>
    /// Every value of every metrics.csv row of <paramref name="stage"/> is exactly one scalar in <paramref name="files"/>, tagged
    /// with its column at the row's step (row i is step i + 1), equal in float32; there are no other scalars; each file starts
    /// with the file_version record, and scalar events carry a Unix wall time.
    /// </summary>
    static void AssertHoldsEveryRow(string stage, string[] files)
    {
        var metrics = MetricsTable.ReadCsv(Path.Combine(stage, "metrics.csv"));
        var scalars = new Dictionary<(string Tag, long Step), float>();
        double now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        foreach (string file in files)
        {
            var events = ReadEvents(file);
            Assert.Equal("brain.Event:2", events[0].FileVersion);
            foreach (var e in events.Skip(1))
            {
                Assert.InRange(e.WallTime, now - 86_400, now + 60);
                foreach (var (tag, value) in e.Values)
                    Assert.True(scalars.TryAdd((tag, e.Step), value), $"{stage}: {tag} at step {e.Step} written twice");
            }
        }
        int expected = 0;
        for (int i = 0; i < metrics.Rows.Count; i++)
            foreach (var (tag, value) in metrics.Rows[i])
            {
                expected++;
                Assert.True(scalars.TryGetValue((tag, i + 1), out float logged), $"{stage}: no {tag} at step {i + 1}");
                Assert.Equal((float)value, logged);
            }
        Assert.Equal(expected, scalars.Count);
    }

    /// <summary>Reads a TFRecord file of <c>Event</c>s, checking both masked CRC32Cs of every record.</summary>
    static List<TfEvent> ReadEvents(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        var events = new List<TfEvent>();
        int pos = 0;
        while (pos < bytes.Length)
        {
            Assert.True(bytes.Length - pos >= 12, $"{path}: a truncated record header at byte {pos}");
            ulong length = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(pos));
            Assert.Equal(MaskedCrc(bytes.AsSpan(pos, 8)), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(pos + 8)));
            Assert.True((ulong)(bytes.Length - pos - 16) >= length, $"{path}: a truncated record at byte {pos}");
            var data = bytes.AsSpan(pos + 12, (int)length);
            Assert.Equal(MaskedCrc(data), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(pos + 12 + (int)length)));
            events.Add(DecodeEvent(data.ToArray()));
            pos += 12 + (int)length + 4;
        }
        return events;
    }

    /// <summary>Decodes the <c>Event</c> fields a scalar log uses; other fields are skipped.</summary>
    static TfEvent DecodeEvent(byte[] data)
    {
        var input = new CodedInputStream(data);
        double wallTime = 0;
        long step = 0;
        string? fileVersion = null;
        var values = new List<(string, float)>();
        for (uint tag; (tag = input.ReadTag()) != 0;)
            switch (tag)
            {
                case (1 << 3) | 1: wallTime = input.ReadDouble(); break;       // wall_time, fixed64
                case (2 << 3) | 0: step = input.ReadInt64(); break;            // step, varint
                case (3 << 3) | 2: fileVersion = input.ReadString(); break;    // file_version, length-delimited
                case (5 << 3) | 2: values.AddRange(DecodeSummary(input.ReadBytes())); break;
                default: input.SkipLastField(); break;
            }
        return new TfEvent(wallTime, step, fileVersion, values);
    }

    /// <summary><c>Summary { repeated Value value = 1; }</c> with <c>Value { string tag = 1; float simple_value = 2; }</c>.</summary>
    static IEnumerable<(string Tag, float Value)> DecodeSummary(ByteString summary)
    {
        var input = summary.CreateCodedInput();
        var values = new List<(string, float)>();
        for (uint tag; (tag = input.ReadTag()) != 0;)
        {
            if (tag != ((1 << 3) | 2)) { input.SkipLastField(); continue; }
            var value = input.ReadBytes().CreateCodedInput();
            string? name = null;
            float? simple = null;
            for (uint t; (t = value.ReadTag()) != 0;)
                switch (t)
                {
                    case (1 << 3) | 2: name = value.ReadString(); break;
                    case (2 << 3) | 5: simple = value.ReadFloat(); break;          // simple_value, fixed32
                    default: value.SkipLastField(); break;
                }
            Assert.True(name is not null && simple is not null, "a summary value without tag or simple_value");
            values.Add((name, simple.Value));
        }
        return values;
    }

    /// <summary>TFRecord's masked CRC: the CRC32C rotated right by 15 bits plus 0xa282ead8.</summary>
    static uint MaskedCrc(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }

    /// <summary>CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit.</summary>
    static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFFu;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        }
        return ~crc;
    }
}
