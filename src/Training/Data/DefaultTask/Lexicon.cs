namespace Rlhf.Training.Data.DefaultTask;

/// <summary>The four kinds of things the default task reviews.</summary>
public enum ReviewDomain { Restaurant, Film, Hotel, Product }

/// <summary>What an aspect noun names; adjectives are chosen to fit it ("the pasta was bland", "the waiter was rude").</summary>
internal enum NounClass { Food, Staff, Place, Value, Story, Cast, Craft, Room, Amenity, Part, Service }

/// <summary>An aspect noun, with its grammatical number for copula agreement ("the fries were").</summary>
internal sealed record Noun(string Text, bool Plural);

/// <summary>The word lists of the default task, written for this project: sentiment words with a signed strength
/// (used by both the generator and <see cref="GoldScorer"/>), intensifiers, negators, aspect nouns per domain and
/// class, and the neutral vocabulary. Sentiment strengths: ±0.1–0.3 lukewarm ("okay", "average"), ±0.5–1 mild
/// ("good", "slow"), ±1.2–1.5 clear ("delicious", "rude"), ±2 strong ("excellent", "awful").</summary>
public static class Lexicon
{
    // ---- sentiment words: one strength per word, whatever the domain ----------------------------------------

    const string GeneralPositive =
        "good:1 great:1.5 excellent:2 wonderful:2 fantastic:2 amazing:2 lovely:1.5 nice:1 decent:0.5 superb:2 "
        + "perfect:2 outstanding:2 terrific:2 impressive:1.5 brilliant:2 pleasant:1 enjoyable:1.2 fabulous:2 solid:0.8";
    const string GeneralNegative =
        "bad:-1 terrible:-2 awful:-2 horrible:-2 poor:-1.2 disappointing:-1.5 mediocre:-0.7 dreadful:-2 lousy:-1.5 "
        + "unpleasant:-1.2 subpar:-1.2 underwhelming:-1 annoying:-1.2 frustrating:-1.5 useless:-2";
    const string Lukewarm = "okay:0.2 fine:0.3 alright:0.2 acceptable:0.3 average:-0.2 ordinary:-0.1";

    const string FoodPositive = "delicious:1.5 tasty:1.2 fresh:1 flavorful:1.2 crispy:0.8 tender:1 juicy:1 rich:0.8 "
        + "generous:1 authentic:1";
    const string FoodNegative = "bland:-1 greasy:-1 stale:-1.5 soggy:-1.2 salty:-0.8 overcooked:-1.2 tasteless:-1.5 "
        + "burnt:-1.2 chewy:-0.8 undercooked:-1.2 watery:-1 lukewarm:-1";
    const string StaffPositive = "friendly:1 attentive:1.2 helpful:1.2 welcoming:1.2 polite:1 fast:0.8 professional:1 "
        + "kind:1 cheerful:1";
    const string StaffNegative = "rude:-1.5 slow:-1 unhelpful:-1.2 careless:-1 unfriendly:-1.5 grumpy:-1.2 impatient:-1 "
        + "dismissive:-1.2";
    const string PlacePositive = "cozy:1 charming:1 lively:0.8 relaxing:1.2 clean:1.2 "
        + "bright:0.8 quiet:1";
    const string PlaceNegative = "noisy:-1.2 cramped:-1.2 dirty:-1.5 dark:-0.5 stuffy:-1 shabby:-1.2 "
        + "loud:-1 depressing:-1.5 crowded:-0.8";
    const string ValuePositive = "generous:1 reasonable:0.8 affordable:0.8 fair:0.8";
    const string ValueNegative = "overpriced:-1.2 tiny:-0.8 expensive:-0.8 stingy:-1.2";
    const string StoryPositive = "gripping:1.5 clever:1.2 moving:1.5 funny:1.2 original:1 witty:1.2 thrilling:1.5 "
        + "touching:1.2 surprising:1 smart:1 entertaining:1.2 memorable:1.2 powerful:1.2";
    const string StoryNegative = "boring:-1.5 predictable:-1 tedious:-1.5 confusing:-1 dull:-1.2 silly:-0.8 slow:-1 "
        + "pointless:-1.5 flat:-1 shallow:-1 messy:-1 clumsy:-1 forgettable:-1";
    const string CastPositive = "convincing:1.2 charming:1 believable:1.2 funny:1.2 talented:1.2 memorable:1.2 "
        + "powerful:1.2 brilliant:2";
    const string CastNegative = "wooden:-1.2 unconvincing:-1.2 annoying:-1.2 flat:-1 forgettable:-1 weak:-1 shallow:-1";
    const string CraftPositive = "stunning:1.8 beautiful:1.5 gorgeous:1.5 striking:1 lovely:1.5 impressive:1.5";
    const string CraftNegative = "cheap:-0.8 cheesy:-1 distracting:-1 ugly:-1.5 loud:-1 messy:-1 dated:-0.8";
    const string RoomPositive = "clean:1.2 spotless:1.5 spacious:1.2 comfortable:1.2 quiet:1 cozy:1 modern:0.8 "
        + "bright:0.8 soft:0.8 fresh:1";
    const string RoomNegative = "dirty:-1.5 cramped:-1.2 shabby:-1.2 smelly:-1.5 uncomfortable:-1.2 dated:-0.8 dark:-0.5 "
        + "broken:-1.5 stuffy:-1 noisy:-1.2 tiny:-0.8 stained:-1.5 damp:-1.2";
    const string AmenityPositive = "convenient:1 relaxing:1.2 lovely:1.5 modern:0.8 generous:1 fast:0.8 clean:1.2 "
        + "quiet:1";
    const string AmenityNegative = "crowded:-0.8 slow:-1 overpriced:-1.2 dirty:-1.5 noisy:-1.2 tiny:-0.8 unreliable:-1.5";
    const string PartPositive = "sturdy:1.2 reliable:1.2 durable:1.2 sleek:1 solid:0.8 intuitive:1.2 responsive:1 "
        + "quiet:1 smooth:1 bright:0.8 powerful:1.2 elegant:1.2 comfortable:1.2";
    const string PartNegative = "flimsy:-1.5 faulty:-1.5 fragile:-1.2 clunky:-1 loud:-1 cheap:-0.8 defective:-1.8 "
        + "unreliable:-1.5 slow:-1 leaky:-1.5 wobbly:-1 scratched:-1 weak:-1 confusing:-1";
    const string ServicePositive = "fast:0.8 quick:0.8 helpful:1.2 clear:1 reasonable:0.8 simple:0.8 easy:1 affordable:0.8";
    const string ServiceNegative = "slow:-1 confusing:-1 late:-1 damaged:-1.5 unhelpful:-1.2 overpriced:-1.2 useless:-2 "
        + "complicated:-1";

    /// <summary>Verbs, feelings and nouns that carry sentiment outside an adjective slot.</summary>
    const string OtherSentiment =
        "loved:1.5 love:1.5 enjoyed:1.2 enjoy:1.2 liked:1 like:1 adored:1.8 hated:-2 hate:-2 disliked:-1.2 "
        + "regret:-1.5 regretted:-1.5 recommend:1.2 recommended:1.2 return:1 disappointed:-1.5 impressed:1.5 "
        + "wasted:-1.5 complain:-1 happy:1.2 pleased:1.2 satisfied:1 unhappy:-1.2 delighted:1.8 annoyed:-1.2 "
        + "best:1.5 worst:-2 gem:1.5 delight:1.5 treat:1.2 pleasure:1.2 bargain:1.2 masterpiece:2 mess:-1.5 "
        + "disaster:-2 letdown:-1.5 nightmare:-2 waste:-1.5 happily:0.8 gladly:0.8";

    /// <summary>Word → signed sentiment strength.</summary>
    public static IReadOnlyDictionary<string, double> SentimentWords { get; }

    /// <summary>Intensifiers and downtoners: word → factor applied to the sentiment word right after it.</summary>
    public static IReadOnlyDictionary<string, double> Intensifiers { get; } = new Dictionary<string, double>
    {
        ["very"] = 1.5, ["really"] = 1.5, ["so"] = 1.5, ["extremely"] = 2.0, ["incredibly"] = 2.0,
        ["truly"] = 1.5, ["quite"] = 1.2, ["super"] = 1.5, ["absolutely"] = 1.8, ["pretty"] = 1.2,
        ["highly"] = 1.5, ["slightly"] = 0.5, ["somewhat"] = 0.6, ["fairly"] = 0.7, ["bit"] = 0.6, ["little"] = 0.6,
    };

    /// <summary>Words that negate a sentiment word up to three words after them.</summary>
    public static IReadOnlySet<string> Negators { get; } = new HashSet<string>
    {
        "not", "never", "no", "hardly", "wasn't", "isn't", "weren't", "aren't", "didn't", "don't", "doesn't",
        "won't", "couldn't", "can't", "wouldn't",
    };

    // ---- nouns ------------------------------------------------------------------------------------------------

    static readonly Dictionary<NounClass, Noun[]> NounsByClass = new()
    {
        [NounClass.Food] = Nouns("pasta soup steak pizza fries* salad dessert bread coffee wine burger noodles* curry fish "
            + "chicken rice cake cocktails* tea sushi tacos* dumplings* lamb risotto pancakes* sandwich omelette lasagna "
            + "ramen chocolate_cake garlic_bread house_wine seafood tiramisu brownies* chips* mushrooms* sauce burrito "
            + "espresso"),
        [NounClass.Staff] = Nouns("waiter waitress staff service owner chef bartender host manager waiters*"),
        [NounClass.Place] = Nouns("atmosphere decor music terrace dining_room table lighting patio view"),
        [NounClass.Value] = Nouns("prices* portions* menu wine_list bill"),
        [NounClass.Story] = Nouns("plot story ending script dialogue pacing twist first_half second_half premise finale "
            + "opening_scene humor jokes* tone"),
        [NounClass.Cast] = Nouns("acting cast lead_actor lead_actress villain performances* characters* hero "
            + "supporting_cast director"),
        [NounClass.Craft] = Nouns("soundtrack music visuals* special_effects* cinematography camera_work costumes* editing "
            + "sound_design sets* animation score"),
        [NounClass.Room] = Nouns("room bed bathroom shower sheets* towels* pillows* balcony carpet mattress window "
            + "air_conditioning minibar suite curtains* furniture"),
        [NounClass.Amenity] = Nouns("pool breakfast gym spa wifi location parking lobby elevator bar garden rooftop "
            + "shuttle reception"),
        [NounClass.Part] = Nouns("battery screen handle lid cable buttons* charger case strap zipper wheels* motor fabric "
            + "speaker sound build_quality design material finish blade camera display switch plug hinge app controls*"),
        [NounClass.Service] = Nouns("delivery packaging instructions* customer_support warranty setup seller"),
    };

    internal static readonly Dictionary<ReviewDomain, NounClass[]> ClassesByDomain = new()
    {
        [ReviewDomain.Restaurant] = [NounClass.Food, NounClass.Food, NounClass.Staff, NounClass.Place, NounClass.Value],
        [ReviewDomain.Film] = [NounClass.Story, NounClass.Cast, NounClass.Craft],
        [ReviewDomain.Hotel] = [NounClass.Room, NounClass.Room, NounClass.Staff, NounClass.Amenity],
        [ReviewDomain.Product] = [NounClass.Part, NounClass.Part, NounClass.Service],
    };

    static readonly Dictionary<NounClass, (string[] Positive, string[] Negative)> AdjectivesByClass = new()
    {
        [NounClass.Food] = (Words(FoodPositive), Words(FoodNegative)),
        [NounClass.Staff] = (Words(StaffPositive), Words(StaffNegative)),
        [NounClass.Place] = (Words(PlacePositive), Words(PlaceNegative)),
        [NounClass.Value] = (Words(ValuePositive), Words(ValueNegative)),
        [NounClass.Story] = (Words(StoryPositive), Words(StoryNegative)),
        [NounClass.Cast] = (Words(CastPositive), Words(CastNegative)),
        [NounClass.Craft] = (Words(CraftPositive), Words(CraftNegative)),
        [NounClass.Room] = (Words(RoomPositive), Words(RoomNegative)),
        [NounClass.Amenity] = (Words(AmenityPositive), Words(AmenityNegative)),
        [NounClass.Part] = (Words(PartPositive), Words(PartNegative)),
        [NounClass.Service] = (Words(ServicePositive), Words(ServiceNegative)),
    };

    internal static readonly string[] GeneralPositiveAdjectives = Words(GeneralPositive);
    internal static readonly string[] GeneralNegativeAdjectives = Words(GeneralNegative);
    internal static readonly string[] LukewarmAdjectives = Words(Lukewarm);

    /// <summary>Names for the thing reviewed: "this place", "this film", "this hotel", "this kettle".</summary>
    internal static readonly Dictionary<ReviewDomain, string[]> Venues = new()
    {
        [ReviewDomain.Restaurant] = Phrases("this place|this restaurant|the bistro|this cafe|the diner|this little spot|"
            + "the pizzeria|this bakery|the noodle bar|this steakhouse|the brasserie|this taverna"),
        [ReviewDomain.Film] = Phrases("this film|this movie|the film|this sequel|this documentary|this comedy|this thriller|"
            + "this drama|this musical|this western|this cartoon|this horror film"),
        [ReviewDomain.Hotel] = Phrases("this hotel|the hotel|this resort|the inn|this motel|the hostel|this guesthouse|"
            + "this lodge|the apartment|this boutique hotel"),
        [ReviewDomain.Product] = Phrases("this kettle|this blender|this toaster|this vacuum|this lamp|this backpack|"
            + "this phone|this laptop|this speaker|this drill|this chair|this mattress|this coffee maker|this suitcase|"
            + "this watch|this printer|this heater|this fan|this jacket|this tent|this mixer|this router|this monitor|"
            + "this pan|this headset|this tablet|this umbrella|this bike"),
    };

    /// <summary>What one visit/viewing/stay/purchase is called: "It was a great {meal}."</summary>
    internal static readonly Dictionary<ReviewDomain, string[]> Occasions = new()
    {
        [ReviewDomain.Restaurant] = Phrases("meal|dinner|lunch|evening|experience|visit|brunch|night out"),
        [ReviewDomain.Film] = Phrases("film|movie|watch|experience|evening|story"),
        [ReviewDomain.Hotel] = Phrases("stay|weekend|experience|trip|holiday|visit"),
        [ReviewDomain.Product] = Phrases("purchase|product|gadget|buy|tool"),
    };

    internal static readonly string[] PositiveNouns = ["gem", "delight", "treat", "pleasure"];
    internal static readonly string[] NegativeNouns = ["mess", "disaster", "letdown", "nightmare"];

    internal static Noun[] NounsOf(NounClass c) => NounsByClass[c];
    internal static string[] AdjectivesOf(NounClass c, bool positive) =>
        positive ? AdjectivesByClass[c].Positive : AdjectivesByClass[c].Negative;

    /// <summary>Every word the grammar can produce, lower case: the yardstick of <see cref="GoldScorer"/>'s
    /// gibberish penalty.</summary>
    public static IReadOnlySet<string> KnownWords { get; }

    static Lexicon()
    {
        var sentiment = new Dictionary<string, double>();
        foreach (string list in new[]
        {
            GeneralPositive, GeneralNegative, Lukewarm, FoodPositive, FoodNegative, StaffPositive, StaffNegative,
            PlacePositive, PlaceNegative, ValuePositive, ValueNegative, StoryPositive, StoryNegative, CastPositive, CastNegative, CraftPositive,
            CraftNegative, RoomPositive, RoomNegative, AmenityPositive, AmenityNegative, PartPositive, PartNegative,
            ServicePositive, ServiceNegative, OtherSentiment,
        })
        {
            foreach (string entry in list.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                int colon = entry.IndexOf(':');
                string word = entry[..colon];
                double value = double.Parse(entry[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture);
                if (sentiment.TryGetValue(word, out double old) && old != value)
                    throw new InvalidOperationException($"Lexicon: '{word}' has two strengths, {old} and {value}");
                sentiment[word] = value;
            }
        }
        SentimentWords = sentiment;

        var known = new HashSet<string>(sentiment.Keys);
        known.UnionWith(Intensifiers.Keys);
        known.UnionWith(Negators);
        foreach (Noun[] nouns in NounsByClass.Values)
            foreach (Noun n in nouns) AddWords(known, n.Text);
        foreach (string[] phrases in Venues.Values.Concat(Occasions.Values))
            foreach (string p in phrases) AddWords(known, p);
        foreach (string p in Grammar.Vocabulary) AddWords(known, p);
        KnownWords = known;
    }

    static void AddWords(HashSet<string> set, string text)
    {
        foreach (string w in TextTokens.Tokenize(text)) if (!TextTokens.IsPunctuation(w)) set.Add(w);
    }

    static string[] Words(string list) =>
        list.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(e => e[..e.IndexOf(':')]).ToArray();

    static string[] Phrases(string list) => list.Split('|');

    static Noun[] Nouns(string list) =>
        list.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(e => new Noun(e.TrimEnd('*').Replace('_', ' '), e.EndsWith('*')))
            .ToArray();
}
