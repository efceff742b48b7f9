using Rlhf.Inference.Rollout;

namespace Rlhf.Inference.Tests.Rollout;

public sealed class StopStringMatcherTests
{
    readonly StopStringMatcher _m = new(["\nUser:", "</s>"]);

    [Fact]
    public void Finds_a_stop_string_in_the_new_text()
    {
        Assert.Equal(5, _m.FindNew("Hello</s>", 3));
        Assert.Equal(-1, _m.FindNew("Hello there", 6));
    }

    [Fact]
    public void Finds_a_stop_string_that_straddles_the_previous_check()
    {
        // "\nUs" was there at the last check (length 8), "er:" arrived now.
        Assert.Equal(5, _m.FindNew("Hello\nUser: hi", 8));
    }

    [Fact]
    public void Ignores_a_stop_string_that_ended_before_the_new_text()
    {
        Assert.Equal(-1, _m.FindNew("a</s>bcdef", 5));
        Assert.Equal(1, _m.FindNew("a</s>bcdef", 4));
    }

    [Fact]
    public void Earliest_stop_wins_and_trim_cuts_before_it()
    {
        Assert.Equal(2, _m.Find("ok</s>\nUser:"));
        Assert.Equal("ok", _m.Trim("ok</s>\nUser:"));
        Assert.Equal("fine", _m.Trim("fine"));
        Assert.Equal("", _m.Trim("</s>x"));
    }

    [Fact]
    public void Empty_matcher_never_matches()
    {
        var none = new StopStringMatcher([]);
        Assert.True(none.IsEmpty);
        Assert.Equal(-1, none.Find("anything"));
        Assert.Throws<ArgumentException>(() => new StopStringMatcher([""]));
    }
}
