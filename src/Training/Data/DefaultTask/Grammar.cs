using Rlhf.Training.Common;
namespace Rlhf.Training.Data.DefaultTask;

/// <summary>The sentence templates of the default task. Each method returns one sentence, lower case except
/// names and "I", with its terminal punctuation; <see cref="ReviewGenerator"/> capitalises and joins them.
/// Every literal word used here is listed in <see cref="Vocabulary"/> (a test checks generated text against it).</summary>
internal sealed class Grammar
{
    /// <summary>Words the templates write themselves (the lexicon adds its own lists).</summary>
    public static readonly string[] Vocabulary =
    [
        "the our my a an and but although which that it is was are were i we would will won't definitely to anyone",
        "everyone friends my friends family overall what real true absolute total complete of money time have had ever",
        "in years life can remember long every minute watching buying with by only problem again at all it's here",
        "on there went came saw visit first second third fourth fifth top visit ordered sat near window bar terrace corner",
        "door upstairs outside menu short long mostly vegetarian written board table for two three four five six seven",
        "ten people came rice small salad bread fries side beans soup next across around from station river market museum",
        "old church main square university harbour dinner took about an hour hours ninety minutes sister brother friend",
        "mother father colleague husband wife cousin picked paid card cash forty dollars sixty euros watched home cinema",
        "plane laptop last week sunday yesterday night weekend family detective brothers town teacher robot journey lost",
        "dog farmer band tour runs based book story novel comic play takes place city space mountains desert paris future",
        "nineteen twenties film series room floor stayed nights beach airport conference centre short walk checked late",
        "evening noon after midnight early morning afternoon served until seven lobby booked online through minute ahead",
        "month beds view street balcony desk kitchen were wedding conference holiday work bought gift sale office camping",
        "trips arrived white brown black large box comes red blue grey green use day have months weeks replaced one model",
        "weighs kilos uses tried has same too parents kids some partner grandmother monday tuesday wednesday thursday",
        "friday saturday sunday am seeing did i've been over seen year ago as bill",
    ];

    static readonly string[] Days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    static readonly string[] Companions =
    [
        "my sister", "my brother", "my parents", "two friends", "my husband", "my wife", "a colleague", "my kids",
        "my family", "some friends", "my partner", "my grandmother",
    ];
    static readonly string[] Relatives =
        ["sister", "brother", "friend", "mother", "father", "colleague", "husband", "wife", "cousin", "partner"];
    static readonly string[] Strong = ["very", "really", "so", "extremely", "incredibly", "truly", "quite", "super",
        "absolutely", "pretty"];
    static readonly string[] Soft = ["a bit", "slightly", "somewhat", "a little", "fairly"];
    static readonly string[] Numbers = ["two", "three", "four", "five", "six", "seven"];
    static readonly string[] Ordinals = ["first", "second", "third", "fourth", "fifth", "top"];
    static readonly string[] Colours = ["white", "brown", "black", "red", "blue", "grey", "green"];

    readonly SplitMixRandom _rng;
    readonly ReviewDomain _domain;
    readonly string _venue;
    readonly bool _past;
    readonly string _narrator; // "I" or "we"
    readonly HashSet<string> _openings = [];
    readonly HashSet<string> _nouns = [];
    bool _venueNamed;

    public Grammar(SplitMixRandom rng, ReviewDomain domain)
    {
        _rng = rng;
        _domain = domain;
        _venue = rng.Pick(Lexicon.Venues[domain]);
        _past = domain is ReviewDomain.Restaurant or ReviewDomain.Hotel ? rng.Chance(0.85) : rng.Chance(0.5);
        _narrator = domain is ReviewDomain.Restaurant or ReviewDomain.Hotel && rng.Chance(0.5) ? "we" : "I";
    }

    // ---- evaluative sentences ---------------------------------------------------------------------------------

    /// <summary>One sentence that evaluates the venue or one of its aspects with the given polarity.</summary>
    public string Evaluative(bool positive) => Fresh(() => EvaluativeOnce(positive));

    string EvaluativeOnce(bool positive)
    {
        int t = WeightedIndex(5, 2, 1.5, 1.2, 1.2, 1.5, 1, 1, 0.7, 0.7);
        return t switch
        {
            0 => Clause(positive) + ".",
            1 => Clause(positive) + ", and " + Clause(positive) + ".",
            2 => NarratorVerb(positive) + " " + Subject().Text + ".",
            3 => Recommend(positive),
            4 => Feeling(positive),
            5 => ItWas(positive),
            6 => Verdict(positive),
            7 => "overall, " + _venue + " " + Copula(false, Tense(), false) + " "
                + GeneralAdjective(positive) + ".",
            8 => "what " + WithArticle(GeneralAdjective(positive) + " " + _rng.Pick(Lexicon.Occasions[_domain])) + "!",
            _ => Superlative(positive),
        };
    }

    /// <summary>A sentence that is positive about one aspect and negative about another.</summary>
    public string Contrast() => Fresh(ContrastOnce);

    string ContrastOnce()
    {
        bool positiveFirst = _rng.Chance(0.5);
        return _rng.Next(3) switch
        {
            0 => Clause(positiveFirst) + ", but " + Clause(!positiveFirst) + ".",
            1 => "although " + Clause(positiveFirst) + ", " + Clause(!positiveFirst) + ".",
            _ => "the only problem was that " + Clause(false) + ".",
        };
    }

    /// <summary>A lukewarm verdict for neutral reviews: "the pasta was okay", "it was fine".</summary>
    public string Lukewarm()
    {
        string adj = _rng.Pick(Lexicon.LukewarmAdjectives);
        if (_rng.Chance(0.5)) return "it " + (Tense() ? "was" : "is") + " " + adj + ".";
        var s = Subject();
        return s.Text + " " + Copula(s.Plural, Tense(), false) + " " + adj + ".";
    }

    /// <summary>"the pasta at this place was really delicious", "the waiter wasn't friendly".</summary>
    string Clause(bool positive)
    {
        var s = Subject();
        var (adjectives, negate) = AdjectivePhrase(positive, s.Class);
        return s.Text + " " + Copula(s.Plural, Tense(), negate) + " " + adjectives;
    }

    (string Text, bool Negate) AdjectivePhrase(bool positive, NounClass c)
    {
        double r = _rng.NextDouble();
        if (r < 0.62) return (Intensified(Adjective(positive, c), positive), false);
        if (r < 0.77)
        {
            string a = Adjective(positive, c), b = Adjective(positive, c);
            for (int i = 0; i < 4 && b == a; i++) b = Adjective(positive, c);
            return b == a ? (a, false) : (Intensified(a, positive) + " and " + b, false);
        }
        if (r < 0.90)
        {
            // Negated opposite: "not friendly" (negative), "not bad" (mildly positive).
            string adj = Adjective(!positive, c);
            if (!positive && _rng.Chance(0.25)) adj = "very " + adj;
            if (!positive && _rng.Chance(0.25)) adj += " at all";
            return (adj, true);
        }
        return (Intensified(GeneralAdjective(positive), positive), false);
    }

    string Adjective(bool positive, NounClass c) =>
        _rng.Chance(0.78) ? _rng.Pick(Lexicon.AdjectivesOf(c, positive)) : GeneralAdjective(positive);

    string GeneralAdjective(bool positive) =>
        _rng.Pick(positive ? Lexicon.GeneralPositiveAdjectives : Lexicon.GeneralNegativeAdjectives);

    string Intensified(string adjective, bool positive)
    {
        double r = _rng.NextDouble();
        if (r < 0.32) return _rng.Pick(Strong) + " " + adjective;
        if (!positive && r < 0.42) return _rng.Pick(Soft) + " " + adjective;
        return adjective;
    }

    string NarratorVerb(bool positive)
    {
        string[] verbs = positive
            ? ["loved", "really enjoyed", "enjoyed", "liked", "adored", "really liked"]
            : ["hated", "disliked", "did not enjoy", "did not like", "didn't like", "didn't enjoy", "really disliked"];
        return _narrator + " " + _rng.Pick(verbs);
    }

    string Recommend(bool positive)
    {
        if (positive)
        {
            if (_rng.Chance(0.2)) return "highly recommended!";
            string how = _rng.Pick(new[] { "", "definitely ", "happily ", "highly ", "gladly " });
            string who = _rng.Pick(new[] { "", " to anyone", " to friends", " to my friends", " to everyone", " to my family" });
            return "i would " + how + "recommend " + _venue + who + ".";
        }
        if (_rng.Chance(0.15)) return "not recommended.";
        string neg = _rng.Pick(new[] { "not", "never" });
        return "i would " + neg + " recommend " + _venue + (_rng.Chance(0.5) ? " to anyone" : "") + ".";
    }

    string Feeling(bool positive)
    {
        bool again = _domain is ReviewDomain.Restaurant or ReviewDomain.Hotel;
        if (again && _rng.Chance(0.4))
        {
            if (positive)
                return _narrator + " will " + _rng.Pick(new[] { "definitely", "happily", "gladly" }) + " return.";
            return _narrator + " " + _rng.Pick(new[] { "will never", "will not", "won't" }) + " return.";
        }
        if (_domain == ReviewDomain.Film && _rng.Chance(0.3))
            return positive ? "i " + _rng.Pick(new[] { "loved", "enjoyed" }) + " every minute."
                : _rng.Chance(0.5) ? "i regret watching it." : "it was a waste of time.";
        if (_domain == ReviewDomain.Product && _rng.Chance(0.3))
            return positive ? "i would gladly buy it again." : _rng.Chance(0.5) ? "i regret buying it." : "it was a waste of money.";
        string be = _narrator == "I" ? (_past ? "was" : "am") : (_past ? "were" : "are");
        string feeling = positive
            ? _rng.Pick(new[] { "pleased", "happy", "satisfied", "impressed", "delighted" })
            : _rng.Pick(new[] { "disappointed", "unhappy", "annoyed" });
        if (!positive && _rng.Chance(0.3))
        {
            feeling = "not " + _rng.Pick(new[] { "pleased", "happy", "satisfied", "impressed" });
        }
        else if (_rng.Chance(0.35)) feeling = _rng.Pick(Strong) + " " + feeling;
        string what = _rng.Chance(0.5) ? _venue : Subject().Text;
        return _narrator + " " + be + " " + feeling + " with " + what + ".";
    }

    string ItWas(bool positive)
    {
        string adj = Intensified(GeneralAdjective(positive), positive);
        return "it was " + WithArticle(adj + " " + _rng.Pick(Lexicon.Occasions[_domain])) + (positive && _rng.Chance(0.3) ? "!" : ".");
    }

    string Verdict(bool positive)
    {
        string be = Tense() ? "was" : "is";
        if (positive)
            return _venue + " " + be + " " + _rng.Pick(new[] { "a real", "a true", "an absolute" }) + " "
                + _rng.Pick(Lexicon.PositiveNouns) + (_domain == ReviewDomain.Product && _rng.Chance(0.3) ? " and a bargain" : "") + ".";
        if (_rng.Chance(0.25)) return _venue + " " + be + " a waste of " + (_domain == ReviewDomain.Film ? "time" : "money") + ".";
        return _venue + " " + be + " " + _rng.Pick(new[] { "a total", "a complete", "an absolute" }) + " "
            + _rng.Pick(Lexicon.NegativeNouns) + ".";
    }

    string Superlative(bool positive)
    {
        string tail = _rng.Pick(new[] { "i have had in years", "of my life", "i can remember", "we have had in a long time" });
        if (_domain == ReviewDomain.Film) tail = _rng.Pick(new[] { "i have seen in years", "of the year", "i can remember" });
        if (_domain == ReviewDomain.Product) tail = _rng.Pick(new[] { "i have bought in years", "i have ever had", "i can remember" });
        return "it was the " + (positive ? "best" : "worst") + " " + _rng.Pick(Lexicon.Occasions[_domain]) + " " + tail + ".";
    }

    // ---- neutral sentences --------------------------------------------------------------------------------------

    /// <summary>A factual sentence with no sentiment: when, where, with whom, what was ordered.</summary>
    public string Neutral() => Fresh(NeutralOnce);

    string NeutralOnce()
    {
        if (_rng.Chance(0.25)) return CommonNeutral();
        return _domain switch
        {
            ReviewDomain.Restaurant => RestaurantNeutral(),
            ReviewDomain.Film => FilmNeutral(),
            ReviewDomain.Hotel => HotelNeutral(),
            _ => ProductNeutral(),
        };
    }

    string CommonNeutral()
    {
        string part = _rng.Pick(new[] { "", " evening", " afternoon", " morning", " night" });
        return _rng.Next(3) switch
        {
            0 => _domain switch
            {
                ReviewDomain.Film => _narrator + " saw it on a " + _rng.Pick(Days) + part + ".",
                ReviewDomain.Product => _narrator + " bought it on a " + _rng.Pick(Days) + part + ".",
                _ => _narrator + " went " + (_rng.Chance(0.5) ? "there " : "") + "on a " + _rng.Pick(Days) + part + ".",
            },
            1 => _domain switch
            {
                ReviewDomain.Film => _narrator + " watched it with " + _rng.Pick(Companions) + ".",
                ReviewDomain.Product => _narrator + " bought it for " + _rng.Pick(Companions) + ".",
                ReviewDomain.Hotel => _narrator + " stayed here with " + _rng.Pick(Companions) + ".",
                _ => _narrator + " came here with " + _rng.Pick(Companions) + ".",
            },
            _ => _domain switch
            {
                ReviewDomain.Film => "it was my first time seeing it.",
                ReviewDomain.Product => "it replaced my old " + _rng.Pick(new[] { "one", "model" }) + ".",
                _ => "it was " + (_narrator == "I" ? "my" : "our") + " " + _rng.Pick(Ordinals[..4]) + " visit.",
            },
        };
    }

    string RestaurantNeutral() => _rng.Next(9) switch
    {
        0 => _narrator + " ordered the " + Food() + " and the " + Food() + ".",
        1 => _narrator + " sat " + _rng.Pick(new[] { "near the window", "at the bar", "on the terrace", "in the corner",
            "by the door", "upstairs", "outside" }) + ".",
        2 => "the menu is " + _rng.Pick(new[] { "short", "long", "mostly vegetarian", "written on a board" }) + ".",
        3 => _narrator + " booked a table for " + _rng.Pick(Numbers) + (_rng.Chance(0.5) ? " people" : "") + ".",
        4 => "the " + Food() + " came with " + _rng.Pick(new[] { "rice", "a small salad", "bread", "fries", "a side of beans",
            "soup" }) + ".",
        5 => "it is " + Near() + " the " + _rng.Pick(new[] { "station", "river", "market", "museum", "old church",
            "main square", "university", "harbour" }) + ".",
        6 => "dinner took about " + _rng.Pick(new[] { "an hour", "two hours", "ninety minutes", "three hours" }) + ".",
        7 => "my " + _rng.Pick(Relatives) + " picked " + _venue + ".",
        _ => _narrator + " paid " + _rng.Pick(new[] { "by card", "in cash", "about forty dollars", "around sixty euros" }) + ".",
    };

    string FilmNeutral() => _rng.Next(7) switch
    {
        0 => _narrator + " watched it " + _rng.Pick(new[] { "at home", "at the cinema", "on a plane", "on my laptop",
            "with my family" }) + " " + _rng.Pick(new[] { "last week", "on Sunday", "yesterday", "last night",
            "over the weekend" }) + ".",
        1 => _venue + " is about " + _rng.Pick(new[] { "a family", "a detective", "two brothers", "a small town",
            "a teacher", "a robot", "a long journey", "a lost dog", "an old farmer", "a band on tour" }) + ".",
        2 => "it runs for about " + _rng.Pick(new[] { "two hours", "ninety minutes", "three hours" }) + ".",
        3 => "it is based on " + _rng.Pick(new[] { "a book", "a true story", "a novel", "a comic", "an old play" }) + ".",
        4 => "the story takes place in " + _rng.Pick(new[] { "a small town", "the city", "space", "the mountains",
            "the desert", "Paris", "the future", "the nineteen twenties" }) + ".",
        5 => "it is the " + _rng.Pick(Ordinals[1..4]) + " film in the series.",
        _ => _narrator + " saw it with " + _rng.Pick(Companions) + ".",
    };

    string HotelNeutral() => _rng.Next(8) switch
    {
        0 => (_narrator == "I" ? "my" : "our") + " room was on the " + _rng.Pick(Ordinals) + " floor.",
        1 => _narrator + " stayed for " + _rng.Pick(Numbers) + " nights.",
        2 => _venue + " is " + Near() + " the " + _rng.Pick(new[] { "station", "beach", "airport", "old town", "harbour",
            "conference centre", "river" }) + ".",
        3 => _narrator + " checked in " + _rng.Pick(new[] { "on a Friday", "late in the evening", "around noon",
            "after midnight", "early in the morning" }) + ".",
        4 => "breakfast is served " + _rng.Pick(new[] { "until ten", "from seven", "in the lobby", "on the terrace" }) + ".",
        5 => _narrator + " booked it " + _rng.Pick(new[] { "online", "through a friend", "at the last minute",
            "a month ahead" }) + ".",
        6 => _narrator + " had a room with " + _rng.Pick(new[] { "two beds", "a view of the street", "a balcony",
            "a small desk", "a kitchen" }) + ".",
        _ => _narrator + " " + (_narrator == "I" ? "was" : "were") + " there for " + _rng.Pick(new[] { "a wedding",
            "a conference", "a short holiday", "work", "a family visit" }) + ".",
    };

    string ProductNeutral() => _rng.Next(7) switch
    {
        0 => "i bought " + _venue + " " + _rng.Pick(new[] { "last month", "a week ago", "for my kitchen", "as a gift",
            "on sale", "for my office", "for camping trips" }) + ".",
        1 => "it arrived in a " + _rng.Pick(new[] { "white", "brown", "black", "small", "large" }) + " box.",
        2 => ComesIn(),
        3 => "i use it every " + _rng.Pick(new[] { "day", "morning", "evening", "week", "weekend" }) + ".",
        4 => "i have had it for " + _rng.Pick(Numbers) + " " + _rng.Pick(new[] { "weeks", "months" }) + ".",
        5 => "it weighs about " + _rng.Pick(Numbers[..4]) + " kilos.",
        _ => "my " + _rng.Pick(Relatives) + " " + _rng.Pick(new[] { "uses it", "tried it", "has the same model" }) + " too.",
    };

    string ComesIn()
    {
        string a = _rng.Pick(Colours), b = _rng.Pick(Colours);
        while (b == a) b = _rng.Pick(Colours);
        return "it comes in " + a + " and " + b + ".";
    }

    string Near() => _rng.Pick(new[] { "near", "next to", "across from", "around the corner from", "a short walk from" });

    string Food() => _rng.Pick(Lexicon.NounsOf(NounClass.Food)).Text;

    // ---- pieces -------------------------------------------------------------------------------------------------

    /// <summary>A sentence whose first three words no earlier sentence of this review began with (a few tries),
    /// so reviews do not repeat themselves ("I watched it ... I watched it").</summary>
    string Fresh(Func<string> make)
    {
        string sentence = make();
        for (int i = 0; i < 6 && !_openings.Add(Opening(sentence)); i++) sentence = make();
        if (sentence.Contains(_venue, StringComparison.Ordinal)) _venueNamed = true;
        return sentence;
    }

    static string Opening(string sentence) => string.Join(' ', sentence.Split(' ').Take(3));

    internal readonly record struct SubjectPhrase(string Text, bool Plural, NounClass Class);

    SubjectPhrase Subject()
    {
        NounClass c = _rng.Pick(Lexicon.ClassesByDomain[_domain]);
        Noun n = _rng.Pick(Lexicon.NounsOf(c));
        for (int i = 0; i < 4 && _nouns.Contains(n.Text); i++) n = _rng.Pick(Lexicon.NounsOf(c));
        _nouns.Add(n.Text);
        string det = "the";
        if (c is NounClass.Food or NounClass.Room && _rng.Chance(0.25))
            det = _narrator == "I" ? "my" : "our";
        string text = det + " " + n.Text;
        if (det == "the" && !_venueNamed && _rng.Chance(0.3))
        {
            _venueNamed = true;
            text += _domain switch
            {
                ReviewDomain.Restaurant => _rng.Chance(0.3) ? " here" : " at " + _venue,
                ReviewDomain.Film => " in " + _venue,
                ReviewDomain.Hotel => _rng.Chance(0.3) ? " here" : " at " + _venue,
                _ => " of " + _venue,
            };
        }
        return new SubjectPhrase(text, n.Plural, c);
    }

    bool Tense() => _past;

    string Copula(bool plural, bool past, bool negated)
    {
        string be = past ? (plural ? "were" : "was") : (plural ? "are" : "is");
        if (!negated) return be;
        return _rng.Chance(0.5) ? be + " not" : be + "n't";
    }

    static string WithArticle(string phrase) => (StartsWithVowelSound(phrase) ? "an " : "a ") + phrase;

    static bool StartsWithVowelSound(string phrase)
    {
        if (phrase.StartsWith("use", StringComparison.Ordinal) || phrase.StartsWith("uni", StringComparison.Ordinal))
            return false;
        return phrase.Length > 0 && "aeiou".Contains(phrase[0]);
    }

    int WeightedIndex(params double[] weights)
    {
        double total = 0;
        foreach (double w in weights) total += w;
        double x = _rng.NextDouble() * total;
        for (int i = 0; i < weights.Length; i++)
        {
            x -= weights[i];
            if (x < 0) return i;
        }
        return weights.Length - 1;
    }
}
