using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data;

namespace Rlhf.Training.Tests.Data;

public sealed class RecordsTests
{
    [Fact]
    public void RankedExampleRejectsRankingsThatAreNotPermutations()
    {
        Assert.Throws<ArgumentException>(() => new RankedExample("p", ["a", "b"], [0, 0]));
        Assert.Throws<ArgumentException>(() => new RankedExample("p", ["a", "b"], [0, 2]));
        Assert.Throws<ArgumentException>(() => new RankedExample("p", ["a", "b", "c"], [0, 1]));
        Assert.Throws<ArgumentException>(() => new RankedExample("p", ["a"], [0]));
        Assert.Null(RankedExample.Validate(["a", "b", "c"], [2, 0, 1]));
    }

    [Fact]
    public void ToPairsGivesAllKChoose2PairsBetterFirst()
    {
        // Ranking[i] = rank of Responses[i]: "c" best, then "a", "d", "b".
        var ex = new RankedExample("p", ["a", "b", "c", "d"], [1, 3, 0, 2]);
        var pairs = ex.ToPairs();
        Assert.Equal(6, pairs.Count);
        Assert.Equal(
            [("c", "a"), ("c", "d"), ("c", "b"), ("a", "d"), ("a", "b"), ("d", "b")],
            pairs.Select(p => (p.Chosen, p.Rejected)).ToArray());
        Assert.All(pairs, p => Assert.Equal("p", p.Prompt));
        Assert.Equal(["c", "a", "d", "b"], ex.ResponsesBestFirst());
    }

    [Fact]
    public void RankedExampleEqualityComparesContents()
    {
        var a = new RankedExample("p", new List<string> { "x", "y" }, new List<int> { 1, 0 });
        var b = new RankedExample("p", ["x", "y"], [1, 0]);
        Assert.Equal(a, b);
        Assert.Equal(a.GetHashCode(), b.GetHashCode());
        Assert.NotEqual(a, new RankedExample("p", ["x", "y"], [0, 1]));
    }

    [Theory]
    [InlineData("The pasta at", "this place was great.", "The pasta at this place was great.")]
    [InlineData("The pasta at ", " this place", "The pasta at this place")]
    [InlineData("It was great", "!", "It was great!")]
    [InlineData("", "response", "response")]
    public void JoinPutsOneSpaceBetweenPromptAndResponse(string prompt, string response, string expected) =>
        Assert.Equal(expected, PromptFormat.Join(prompt, response));
}
