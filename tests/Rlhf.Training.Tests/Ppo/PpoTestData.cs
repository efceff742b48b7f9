using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>Random [B, A] batches with right-padded masks of uneven lengths, and tensor/array conversions.</summary>
internal static class PpoTestData
{
    public static Tensor T(float[][] rows) =>
        tensor(rows.SelectMany(r => r).ToArray(), [rows.Length, rows[0].Length]);

    public static Tensor T(float[] flat, int b, int a) => tensor(flat, [b, a]);

    public static float[] Flat(Tensor t) => t.detach().cpu().to_type(ScalarType.Float32).data<float>().ToArray();

    /// <summary>Row lengths including an empty row and a full row; mask[b, t] = t &lt; len[b].</summary>
    public static int[] Lengths(Random rng, int b, int a)
    {
        var len = new int[b];
        for (int i = 0; i < b; i++) len[i] = rng.Next(0, a + 1);
        len[0] = a;
        if (b > 2) len[1] = 0;
        if (b > 3) len[2] = 1;
        return len;
    }

    public static float[] Mask(int[] len, int a)
    {
        var m = new float[len.Length * a];
        for (int i = 0; i < len.Length; i++)
            for (int t = 0; t < len[i]; t++) m[i * a + t] = 1;
        return m;
    }

    /// <summary>N(0, σ²) values; padded positions get garbage (large values) so leaks show up.</summary>
    public static float[] Values(Random rng, int[] len, int a, double sigma = 1, double shift = 0)
    {
        var x = new float[len.Length * a];
        for (int i = 0; i < len.Length; i++)
            for (int t = 0; t < a; t++)
                x[i * a + t] = t < len[i] ? (float)(shift + sigma * Normal(rng)) : 1000f + t;
        return x;
    }

    public static double Normal(Random rng) =>
        Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());

    public static void Close(float[] expected, float[] actual, double tol)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tol * (1 + Math.Abs(expected[i])),
                $"index {i}: expected {expected[i]}, got {actual[i]}");
    }
}
