using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;

namespace Rlhf.Training.Tests.Data;

public sealed class ReviewGeneratorTests
{
    static readonly IReadOnlyList<Review> Sample = new ReviewGenerator(7).Generate(3000);

    [Fact]
    public void SameSeedSameTextDifferentSeedDifferentText()
    {
        var a = new ReviewGenerator(42).Generate(200).Select(r => r.Text).ToArray();
        var b = new ReviewGenerator(42).Generate(200).Select(r => r.Text).ToArray();
        var c = new ReviewGenerator(43).Generate(200).Select(r => r.Text).ToArray();
        Assert.Equal(a, b);
        Assert.True(a.Zip(c).Count(p => p.First != p.Second) > 190);
    }

    [Fact]
    public void FirstReviewOfSeedIsPinned()
    {
        // Pins the generator (RNG, lexicon, templates): if this changes, every data set of the default task changes.
        var r = new ReviewGenerator(1).Next();
        Assert.Equal(Pinned, r.Text);
        Assert.Equal(ReviewSentiment.Mixed, r.Sentiment);
    }

    const string Pinned = "We stayed here with my brother. We disliked the location. We liked the bathroom.";

    [Fact]
    public void ReviewsHave8To40WordsAndTerminalPunctuationAndCapitals()
    {
        foreach (var r in Sample)
        {
            Assert.InRange(r.WordCount, 8, 40);
            Assert.True(r.Text[^1] is '.' or '!' or '?', r.Text);
            Assert.True(char.IsUpper(r.Text[0]), r.Text);
            Assert.DoesNotContain(" i ", r.Text);
            Assert.DoesNotContain("  ", r.Text);
        }
    }

    [Fact]
    public void EveryGeneratedWordIsKnownToTheLexicon()
    {
        var unknown = Sample.SelectMany(r => GoldScorer.Tokenize(r.Text))
            .Where(t => !GoldScorer.IsPunctuation(t) && !Lexicon.KnownWords.Contains(t))
            .Distinct().ToArray();
        Assert.Empty(unknown);
    }

    [Fact]
    public void SentimentMixMatchesTheConfiguredProportions()
    {
        double n = Sample.Count;
        Assert.InRange(Sample.Count(r => r.Sentiment == ReviewSentiment.Positive) / n, 0.31, 0.39);
        Assert.InRange(Sample.Count(r => r.Sentiment == ReviewSentiment.Negative) / n, 0.31, 0.39);
        Assert.InRange(Sample.Count(r => r.Sentiment == ReviewSentiment.Mixed) / n, 0.12, 0.18);
        Assert.InRange(Sample.Count(r => r.Sentiment == ReviewSentiment.Neutral) / n, 0.12, 0.18);
        foreach (ReviewDomain d in Enum.GetValues<ReviewDomain>())
            Assert.InRange(Sample.Count(r => r.Domain == d) / n, 0.2, 0.3);

        var onlyNeutral = new ReviewGenerator(3, new ReviewGeneratorOptions { Mix = new SentimentMix(0, 0, 0, 1) }).Generate(100);
        Assert.All(onlyNeutral, r => Assert.Equal(ReviewSentiment.Neutral, r.Sentiment));
    }

    [Fact]
    public void GoldScoreFollowsTheLatentSentiment()
    {
        double Mean(ReviewSentiment s) => Sample.Where(r => r.Sentiment == s).Average(r => GoldScorer.Reward("", r.Text));
        Assert.True(Mean(ReviewSentiment.Positive) > 1.2, $"positive mean {Mean(ReviewSentiment.Positive)}");
        Assert.True(Mean(ReviewSentiment.Negative) < -1.2, $"negative mean {Mean(ReviewSentiment.Negative)}");
        Assert.InRange(Mean(ReviewSentiment.Neutral), -0.5, 0.5);
        Assert.InRange(Mean(ReviewSentiment.Mixed), -1.2, 1.2);
        int positiveRight = Sample.Count(r => r.Sentiment == ReviewSentiment.Positive && GoldScorer.Reward("", r.Text) > 0);
        Assert.True(positiveRight > 0.95 * Sample.Count(r => r.Sentiment == ReviewSentiment.Positive));
    }

    [Fact]
    public void TheLanguageIsVaried()
    {
        Assert.True(Sample.Select(r => r.Text).Distinct().Count() > 0.99 * Sample.Count);
        Assert.True(Lexicon.KnownWords.Count > 500, $"{Lexicon.KnownWords.Count} known words");
        int distinctWords = Sample.SelectMany(r => GoldScorer.Tokenize(r.Text)).Distinct().Count();
        Assert.True(distinctWords > 450, $"{distinctWords} distinct words in the sample");
    }

    [Fact]
    public void SftSplitKeepsThreeToSixPromptWordsAndJoinsBackToTheReview()
    {
        var g = new ReviewGenerator(11);
        for (int i = 0; i < 500; i++)
        {
            var review = g.Next();
            var ex = g.Split(review);
            Assert.InRange(ReviewGenerator.CountWords(ex.Prompt), 3, 6);
            Assert.True(ReviewGenerator.CountWords(ex.Response) >= 5, ex.Response);
            Assert.Equal(review.Text, PromptFormat.Join(ex.Prompt, ex.Response));
        }
    }

    [Fact]
    public void PromptsAreVariedAndSomeOpenNeutrally()
    {
        var prompts = DataSets.Prompts(5, DataSets.PpoPromptsName, 1000);
        Assert.True(prompts.Select(p => p.Prompt).Distinct().Count() > 700);
        int neutral = prompts.Count(p => GoldScorer.RawSentiment(GoldScorer.Tokenize(p.Prompt)) == 0);
        Assert.InRange(neutral, 300, 950);
    }

    [Fact]
    public void SplitsUseDisjointStreams()
    {
        var train = DataSets.SftExamples(1, DataSets.SftTrainName, 300).Select(e => PromptFormat.Join(e.Prompt, e.Response));
        var eval = DataSets.SftExamples(1, DataSets.SftEvalName, 300).Select(e => PromptFormat.Join(e.Prompt, e.Response));
        Assert.True(train.Intersect(eval).Count() < 5);
        Assert.NotEqual(DataSets.SplitSeed(1, DataSets.RmPromptsName), DataSets.SplitSeed(1, DataSets.PpoPromptsName));
    }

    [Fact]
    public void OptionsAreValidated()
    {
        Assert.Throws<ArgumentException>(() => new ReviewGenerator(1, new ReviewGeneratorOptions { MinWords = 50 }));
        Assert.Throws<ArgumentException>(() => new ReviewGenerator(1, new ReviewGeneratorOptions { Mix = new SentimentMix(-1) }));
    }
}
