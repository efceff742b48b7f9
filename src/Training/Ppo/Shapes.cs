using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>Shape checks for the public entry points of the PPO math; messages name the argument and both shapes.</summary>
internal static class Shapes
{
    public static string Of(Tensor t) => $"[{string.Join(", ", t.shape)}]";

    /// <summary>Throws unless <paramref name="t"/> has <paramref name="rank"/> dimensions.</summary>
    public static void Rank(Tensor t, int rank, string name, string expected)
    {
        if (t.dim() != rank)
            throw new ArgumentException($"{name} must be {expected}; got {Of(t)}", name);
    }

    /// <summary>Throws unless <paramref name="t"/> has exactly the shape of <paramref name="like"/>.</summary>
    public static void Same(Tensor t, Tensor like, string name, string likeName)
    {
        if (!t.shape.SequenceEqual(like.shape))
            throw new ArgumentException($"{name} {Of(t)} must have the shape of {likeName} {Of(like)}", name);
    }

    /// <summary>[B, A] checks: <paramref name="x"/> is 2-D and every other tensor matches it.</summary>
    public static void BA(Tensor x, string name, params (Tensor T, string Name)[] others)
    {
        Rank(x, 2, name, "[B, A]");
        foreach (var (t, n) in others) Same(t, x, n, name);
    }
}
