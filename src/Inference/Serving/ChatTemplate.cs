using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Rlhf.Inference.Serving;

/// <summary>
/// A Hugging Face chat template (Jinja, as in <c>tokenizer_config.json</c>'s <c>chat_template</c>) rendered by a small
/// Jinja subset, with the environment Hugging Face renders them in (<c>trim_blocks</c>, <c>lstrip_blocks</c>) — enough
/// for the common ChatML/Qwen2, Llama-2/3, Mistral and Zephyr templates. Supported: text, <c>{{ }}</c>, <c>{# #}</c>,
/// whitespace control (<c>{%- -%}</c>, <c>{{- -}}</c>), <c>{% for x in ... %}</c> with <c>loop.index/index0/first/last/length</c>,
/// <c>{% if %}/{% elif %}/{% else %}</c>, <c>{% set x = ... %}</c>; literals, names, <c>a.b</c>, <c>a['b']</c>,
/// <c>a[i]</c>, <c>a[i:j]</c>, <c>+ - * % ~</c>, comparisons, <c>in</c>, <c>and/or/not</c>, <c>x if c else y</c>,
/// <c>is (not) defined/none/string</c>, the filters <c>trim</c> and <c>length</c>, the methods <c>strip/lstrip/rstrip</c>,
/// and <c>raise_exception(msg)</c>. Anything else is refused at parse time by a <see cref="ChatTemplateException"/>
/// naming the construct.
/// </summary>
public sealed class ChatTemplate
{
    readonly List<Node> _body;

    ChatTemplate(string source, List<Node> body) => (Source, _body) = (source, body);

    /// <summary>The template text.</summary>
    public string Source { get; }

    /// <summary>Parses <paramref name="source"/>; throws <see cref="ChatTemplateException"/> for what the subset lacks.</summary>
    public static ChatTemplate Parse(string source)
    {
        var parser = new Parser(Lexer.Tokens(source));
        var body = parser.Block(out string? end);
        if (end is not null) throw new ChatTemplateException($"'{{% {end} %}}' without its opening tag");
        return new ChatTemplate(source, body);
    }

    /// <summary>
    /// The template of a model folder: <c>chat_template.jinja</c>, else <c>tokenizer_config.json</c>'s <c>chat_template</c>
    /// (a string, or a list of named templates of which <c>default</c> counts); null when there is none.
    /// </summary>
    public static string? Find(string folder)
    {
        string jinja = Path.Combine(folder, "chat_template.jinja");
        if (File.Exists(jinja)) return File.ReadAllText(jinja);
        string config = Path.Combine(folder, "tokenizer_config.json");
        if (!File.Exists(config)) return null;
        using var doc = JsonDocument.Parse(File.ReadAllBytes(config), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("chat_template", out var t)) return null;
        return t.ValueKind switch
        {
            JsonValueKind.String => t.GetString(),
            JsonValueKind.Array => t.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("name", out var n) && n.GetString() == "default")
                .Select(e => e.TryGetProperty("template", out var s) ? s.GetString() : null).FirstOrDefault(),
            _ => null,
        };
    }

    /// <summary>
    /// Renders the conversation: <c>messages</c> (role, content), <c>add_generation_prompt</c>, <c>bos_token</c>,
    /// <c>eos_token</c>. A <c>raise_exception</c> in the template, or an operation on values it cannot take, throws
    /// <see cref="ChatTemplateException"/>.
    /// </summary>
    public string Render(IReadOnlyList<(string Role, string Content)> messages, bool addGenerationPrompt, string? bosToken, string? eosToken)
    {
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = messages.Select(m => (object?)new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
            ["add_generation_prompt"] = addGenerationPrompt,
            ["bos_token"] = bosToken ?? "",
            ["eos_token"] = eosToken ?? "",
        };
        var output = new StringBuilder();
        Run(_body, scope, output);
        return output.ToString();
    }

    // ---- evaluation ----

    /// <summary>Jinja's undefined value: renders empty, is false, compares unequal.</summary>
    sealed class Undefined
    {
        public static readonly Undefined Value = new();
        public override string ToString() => "";
    }

    static void Run(List<Node> nodes, Dictionary<string, object?> scope, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            switch (node)
            {
                case TextNode t:
                    output.Append(t.Text);
                    break;
                case OutputNode o:
                    output.Append(Str(o.Expr.Eval(scope)));
                    break;
                case SetNode s:
                    scope[s.Name] = s.Value.Eval(scope);
                    break;
                case IfNode i:
                    var branch = i.Branches.FirstOrDefault(b => Truthy(b.Condition.Eval(scope)));
                    Run(branch.Body ?? i.Else, scope, output);
                    break;
                case ForNode f:
                    var items = f.Items.Eval(scope) switch
                    {
                        IList<object?> list => list,
                        string s => [.. s.Select(c => (object?)c.ToString())],
                        IDictionary<string, object?> d => [.. d.Keys],
                        Undefined or null => [],
                        var other => throw new ChatTemplateException($"cannot loop over {TypeName(other)}"),
                    };
                    // Jinja scopes the loop variable (and sets inside the loop) to the loop.
                    var inner = new Dictionary<string, object?>(scope, StringComparer.Ordinal);
                    for (int k = 0; k < items.Count; k++)
                    {
                        inner[f.Variable] = items[k];
                        inner["loop"] = new Dictionary<string, object?>(StringComparer.Ordinal)
                        {
                            ["index"] = (long)k + 1, ["index0"] = (long)k, ["first"] = k == 0, ["last"] = k == items.Count - 1,
                            ["length"] = (long)items.Count, ["revindex"] = (long)(items.Count - k), ["revindex0"] = (long)(items.Count - k - 1),
                        };
                        Run(f.Body, inner, output);
                    }
                    break;
                default:
                    throw new InvalidOperationException(node.GetType().Name);
            }
        }
    }

    static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long n => n != 0,
        double d => d != 0,
        string s => s.Length > 0,
        IList<object?> l => l.Count > 0,
        IDictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    static string Str(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        string s => s,
        bool b => b ? "True" : "False",
        long n => n.ToString(CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        _ => Repr(v),
    };

    /// <summary>Python's repr, for values that are printed inside lists and dicts.</summary>
    static string Repr(object? v) => v switch
    {
        string s => "'" + s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("'", "\\'", StringComparison.Ordinal) + "'",
        IList<object?> l => "[" + string.Join(", ", l.Select(Repr)) + "]",
        IDictionary<string, object?> d => "{" + string.Join(", ", d.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        _ => Str(v),
    };

    static string TypeName(object? v) => v switch
    {
        null => "none",
        Undefined => "an undefined value",
        string => "a string",
        bool => "a boolean",
        long => "an integer",
        double => "a float",
        IList<object?> => "a list",
        IDictionary<string, object?> => "a dict",
        _ => v.GetType().Name,
    };

    static bool Equal(object? a, object? b) => (a, b) switch
    {
        (null, null) => true,
        (Undefined, _) or (_, Undefined) => false,
        (long x, double y) => x == y,
        (double x, long y) => x == y,
        (IList<object?> x, IList<object?> y) => x.Count == y.Count && x.Zip(y).All(p => Equal(p.First, p.Second)),
        _ => Equals(a, b),
    };

    static int Compare(object? a, object? b, string op) => (a, b) switch
    {
        (long x, long y) => x.CompareTo(y),
        (long or double, long or double) => Convert.ToDouble(a, CultureInfo.InvariantCulture).CompareTo(Convert.ToDouble(b, CultureInfo.InvariantCulture)),
        (string x, string y) => string.CompareOrdinal(x, y),
        _ => throw new ChatTemplateException($"cannot compare {TypeName(a)} and {TypeName(b)} with '{op}'"),
    };

    static object? Binary(string op, object? a, object? b) => op switch
    {
        "+" => (a, b) switch
        {
            (string x, string y) => x + y,
            (long x, long y) => x + y,
            (long or double, long or double) => Convert.ToDouble(a, CultureInfo.InvariantCulture) + Convert.ToDouble(b, CultureInfo.InvariantCulture),
            (IList<object?> x, IList<object?> y) => x.Concat(y).ToList(),
            _ => throw new ChatTemplateException($"cannot add {TypeName(a)} and {TypeName(b)} with '+' (use '~' to join as text)"),
        },
        "-" or "*" or "%" => (a, b) switch
        {
            (long x, long y) => op switch
            {
                "-" => x - y,
                "*" => x * y,
                _ => y == 0 ? throw new ChatTemplateException("modulo by zero") : ((x % y) + y) % y,   // Python's sign
            },
            (string s, long n) when op == "*" => string.Concat(Enumerable.Repeat(s, (int)Math.Max(0, n))),
            _ => throw new ChatTemplateException($"cannot apply '{op}' to {TypeName(a)} and {TypeName(b)}"),
        },
        "~" => Str(a) + Str(b),
        "==" => Equal(a, b),
        "!=" => !Equal(a, b),
        "<" => Compare(a, b, op) < 0,
        ">" => Compare(a, b, op) > 0,
        "<=" => Compare(a, b, op) <= 0,
        ">=" => Compare(a, b, op) >= 0,
        "in" => Contains(b, a),
        "not in" => !Contains(b, a),
        _ => throw new InvalidOperationException(op),
    };

    static bool Contains(object? container, object? item) => container switch
    {
        string s when item is string x => s.Contains(x, StringComparison.Ordinal),
        IList<object?> l => l.Any(e => Equal(e, item)),
        IDictionary<string, object?> d => item is string k && d.ContainsKey(k),
        _ => throw new ChatTemplateException($"cannot test membership in {TypeName(container)}"),
    };

    static object? Item(object? target, object? key) => (target, key) switch
    {
        (IDictionary<string, object?> d, string k) => d.TryGetValue(k, out var v) ? v : Undefined.Value,
        (IList<object?> l, long i) => Index(i, l.Count) is int j ? l[j] : Undefined.Value,
        (string s, long i) => Index(i, s.Length) is int j ? s[j].ToString() : Undefined.Value,
        (Undefined, _) => throw new ChatTemplateException($"cannot read [{Repr(key)}] of an undefined value"),
        _ => Undefined.Value,
    };

    static int? Index(long i, int count)
    {
        long j = i < 0 ? i + count : i;
        return j >= 0 && j < count ? (int)j : null;
    }

    static object? Slice(object? target, long? start, long? stop)
    {
        int Clamp(long? v, int count, int fallback) => v is not long x ? fallback : (int)Math.Clamp(x < 0 ? x + count : x, 0, count);
        switch (target)
        {
            case IList<object?> l:
            {
                int a = Clamp(start, l.Count, 0), b = Clamp(stop, l.Count, l.Count);
                return b > a ? l.Skip(a).Take(b - a).ToList() : new List<object?>();
            }
            case string s:
            {
                int a = Clamp(start, s.Length, 0), b = Clamp(stop, s.Length, s.Length);
                return b > a ? s[a..b] : "";
            }
            default:
                throw new ChatTemplateException($"cannot slice {TypeName(target)}");
        }
    }

    // ---- syntax tree ----

    abstract record Node;
    sealed record TextNode(string Text) : Node;
    sealed record OutputNode(Expr Expr) : Node;
    sealed record SetNode(string Name, Expr Value) : Node;
    sealed record IfNode(List<(Expr Condition, List<Node> Body)> Branches, List<Node> Else) : Node;
    sealed record ForNode(string Variable, Expr Items, List<Node> Body) : Node;

    abstract record Expr
    {
        public abstract object? Eval(Dictionary<string, object?> scope);
    }

    sealed record Literal(object? Value) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => Value;
    }

    sealed record Name(string Id) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => scope.TryGetValue(Id, out var v) ? v : Undefined.Value;
    }

    sealed record ListExpr(List<Expr> Items) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => Items.Select(i => i.Eval(scope)).ToList();
    }

    sealed record Attr(Expr Target, string Member) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => Target.Eval(scope) switch
        {
            Undefined => throw new ChatTemplateException($"cannot read .{Member} of an undefined value"),
            var t => Item(t, Member),
        };
    }

    sealed record Subscript(Expr Target, Expr Key) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => Item(Target.Eval(scope), Key.Eval(scope));
    }

    sealed record SliceExpr(Expr Target, Expr? Start, Expr? Stop) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) =>
            Slice(Target.Eval(scope), Bound(Start?.Eval(scope)), Bound(Stop?.Eval(scope)));

        static long? Bound(object? v) => v switch
        {
            null => null,
            long n => n,
            _ => throw new ChatTemplateException($"slice bounds must be integers, not {TypeName(v)}"),
        };
    }

    sealed record BinaryExpr(string Op, Expr Left, Expr Right) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => Op switch
        {
            "and" => Left.Eval(scope) is var a && !Truthy(a) ? a : Right.Eval(scope),
            "or" => Left.Eval(scope) is var a && Truthy(a) ? a : Right.Eval(scope),
            _ => Binary(Op, Left.Eval(scope), Right.Eval(scope)),
        };
    }

    sealed record NotExpr(Expr Operand) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => !Truthy(Operand.Eval(scope));
    }

    sealed record NegateExpr(Expr Operand) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => Operand.Eval(scope) switch
        {
            long n => (object)(-n),
            double d => -d,
            var v => throw new ChatTemplateException($"cannot negate {TypeName(v)}"),
        };
    }

    sealed record Conditional(Expr Then, Expr Condition, Expr? Else) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) =>
            Truthy(Condition.Eval(scope)) ? Then.Eval(scope) : Else is null ? Undefined.Value : Else.Eval(scope);
    }

    sealed record TestExpr(Expr Operand, string Test, bool Negated) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope)
        {
            var v = Operand.Eval(scope);
            bool r = Test switch
            {
                "defined" => v is not Undefined,
                "undefined" => v is Undefined,
                "none" => v is null,
                "string" => v is string,
                _ => throw new InvalidOperationException(Test),
            };
            return r != Negated;
        }
    }

    sealed record Transform(Expr Operand, string Kind, string Name) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope)
        {
            var v = Operand.Eval(scope);
            return (Name, v) switch
            {
                ("trim" or "strip" or "lstrip" or "rstrip", Undefined) => "",
                ("trim" or "strip", string s) => s.Trim(),
                ("lstrip", string s) => s.TrimStart(),
                ("rstrip", string s) => s.TrimEnd(),
                ("length", string s) => (long)s.Length,
                ("length", IList<object?> l) => (long)l.Count,
                ("length", IDictionary<string, object?> d) => (long)d.Count,
                _ => throw ChatTemplateException.Unsupported($"the {Kind} '{Name}' cannot take {TypeName(v)}"),
            };
        }
    }

    sealed record RaiseExpr(Expr Message) : Expr
    {
        public override object? Eval(Dictionary<string, object?> scope) => throw new ChatTemplateException(Str(Message.Eval(scope)), raised: true);
    }

    // ---- lexing: text and tags, with HF's trim_blocks / lstrip_blocks and Jinja's '-' markers ----

    enum TagKind { Text, Output, Statement }

    sealed record Token(TagKind Kind, string Content);

    static class Lexer
    {
        public static List<Token> Tokens(string source)
        {
            var tokens = new List<Token>();
            var text = new StringBuilder();
            int i = 0;
            bool trimNextNewline = false, stripNextWhitespace = false;
            while (i < source.Length)
            {
                int open = IndexOfTag(source, i);
                string chunk = source[i..(open < 0 ? source.Length : open)];
                if (stripNextWhitespace) chunk = chunk.TrimStart();
                else if (trimNextNewline && chunk.StartsWith('\n')) chunk = chunk[1..];
                else if (trimNextNewline && chunk.StartsWith("\r\n", StringComparison.Ordinal)) chunk = chunk[2..];
                (trimNextNewline, stripNextWhitespace) = (false, false);
                if (open < 0)
                {
                    text.Append(chunk);
                    break;
                }
                char kind = source[open + 1];
                string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
                int end = kind == '#' ? source.IndexOf(close, open + 2, StringComparison.Ordinal) : CloseOutsideStrings(source, open + 2, close);
                if (end < 0) throw new ChatTemplateException($"unclosed '{source.Substring(open, 2)}' tag at character {open}");
                string inner = source[(open + 2)..end];
                bool stripBefore = inner.StartsWith('-'), stripAfter = inner.EndsWith('-');
                if (inner.StartsWith('+') || inner.EndsWith('+')) throw ChatTemplateException.Unsupported("the '+' whitespace marker");
                if (stripBefore) chunk = chunk.TrimEnd();
                else if (kind != '{')
                {
                    // lstrip_blocks: spaces and tabs between a line's start (in the source) and a block or comment tag go.
                    int k = open;
                    while (k > 0 && source[k - 1] is ' ' or '\t') k--;
                    if (k == 0 || source[k - 1] == '\n') chunk = chunk.TrimEnd(' ', '\t');
                }
                text.Append(chunk);
                int from = stripBefore ? 1 : 0, to = Math.Max(from, inner.Length - (stripAfter ? 1 : 0));
                string body = inner[from..to].Trim();
                if (kind != '#')
                {
                    if (text.Length > 0) tokens.Add(new Token(TagKind.Text, text.ToString()));
                    text.Clear();
                    tokens.Add(new Token(kind == '{' ? TagKind.Output : TagKind.Statement, body));
                }
                stripNextWhitespace = stripAfter;
                trimNextNewline = kind != '{';   // trim_blocks
                i = end + 2;
            }
            if (text.Length > 0) tokens.Add(new Token(TagKind.Text, text.ToString()));
            return tokens;
        }

        /// <summary>Where <paramref name="close"/> ends a tag, skipping string literals (a <c>'}}'</c> inside one does not end it); -1: never.</summary>
        static int CloseOutsideStrings(string s, int from, string close)
        {
            char quote = '\0';
            for (int i = from; i < s.Length; i++)
            {
                char c = s[i];
                if (quote != '\0')
                {
                    if (c == '\\') i++;
                    else if (c == quote) quote = '\0';
                }
                else if (c is '\'' or '"') quote = c;
                else if (string.CompareOrdinal(s, i, close, 0, close.Length) == 0) return i;
            }
            return -1;
        }

        static int IndexOfTag(string s, int from)
        {
            for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
                if (s[i + 1] is '{' or '%' or '#') return i;
            return -1;
        }
    }

    // ---- parsing ----

    sealed class Parser(List<Token> tokens)
    {
        int _pos;

        /// <summary>Nodes up to the next block keyword that closes or continues the caller's block (returned in <paramref name="end"/>; null at the end).</summary>
        public List<Node> Block(out string? end)
        {
            var nodes = new List<Node>();
            while (_pos < tokens.Count)
            {
                var t = tokens[_pos++];
                switch (t.Kind)
                {
                    case TagKind.Text:
                        nodes.Add(new TextNode(t.Content));
                        break;
                    case TagKind.Output:
                        nodes.Add(new OutputNode(ExprParser.Parse(t.Content)));
                        break;
                    default:
                        var words = new ExprLexer(t.Content);
                        string keyword = words.Peek().Text;
                        switch (keyword)
                        {
                            case "if":
                                words.Next();
                                nodes.Add(If(ExprParser.ParseRest(words)));
                                break;
                            case "for":
                                words.Next();
                                nodes.Add(For(words));
                                break;
                            case "set":
                                words.Next();
                                var name = words.Next();
                                if (name.Kind != TokKind.Name || words.Peek().Text != "=")
                                    throw ChatTemplateException.Unsupported("'{% set %}' other than '{% set name = value %}' (block sets, several targets)");
                                words.Next();
                                nodes.Add(new SetNode(name.Text, ExprParser.ParseRest(words)));
                                break;
                            case "elif" or "else" or "endif" or "endfor":
                                end = t.Content;
                                return nodes;
                            default:
                                throw ChatTemplateException.Unsupported($"the statement '{{% {keyword} %}}'");
                        }
                        break;
                }
            }
            end = null;
            return nodes;
        }

        IfNode If(Expr condition)
        {
            var branches = new List<(Expr, List<Node>)>();
            var body = Block(out string? end);
            branches.Add((condition, body));
            while (true)
            {
                if (end is null) throw new ChatTemplateException("'{% if %}' without '{% endif %}'");
                var words = new ExprLexer(end);
                string keyword = words.Next().Text;
                if (keyword == "elif")
                {
                    var c = ExprParser.ParseRest(words);
                    branches.Add((c, Block(out end)));
                }
                else if (keyword == "else")
                {
                    var elseBody = Block(out end);
                    if (end?.Trim() != "endif") throw new ChatTemplateException("'{% else %}' of an if without '{% endif %}' after it");
                    return new IfNode(branches, elseBody);
                }
                else if (keyword == "endif") return new IfNode(branches, []);
                else throw new ChatTemplateException($"'{{% {end} %}}' inside an if");
            }
        }

        ForNode For(ExprLexer words)
        {
            var variable = words.Next();
            if (variable.Kind != TokKind.Name || words.Peek().Text == ",") throw ChatTemplateException.Unsupported("a for loop over several targets ('for a, b in ...')");
            if (words.Next().Text != "in") throw new ChatTemplateException("a for loop without 'in'");
            var items = ExprParser.ParseFor(words);
            var body = Block(out string? end);
            if (end?.Trim() == "else") throw ChatTemplateException.Unsupported("'{% else %}' of a for loop");
            if (end?.Trim() != "endfor") throw new ChatTemplateException("'{% for %}' without '{% endfor %}'");
            return new ForNode(variable.Text, items, body);
        }
    }

    enum TokKind { Name, String, Int, Float, Op, End }

    sealed record Tok(TokKind Kind, string Text, object? Value = null);

    sealed class ExprLexer
    {
        readonly List<Tok> _toks = [];
        int _pos;

        public ExprLexer(string s)
        {
            int i = 0;
            while (i < s.Length)
            {
                char c = s[i];
                if (char.IsWhiteSpace(c)) { i++; continue; }
                if (char.IsLetter(c) || c == '_')
                {
                    int j = i;
                    while (j < s.Length && (char.IsLetterOrDigit(s[j]) || s[j] == '_')) j++;
                    _toks.Add(new Tok(TokKind.Name, s[i..j]));
                    i = j;
                }
                else if (char.IsDigit(c))
                {
                    int j = i;
                    while (j < s.Length && char.IsDigit(s[j])) j++;
                    if (j + 1 < s.Length && s[j] == '.' && char.IsDigit(s[j + 1]))
                    {
                        j++;
                        while (j < s.Length && char.IsDigit(s[j])) j++;
                        _toks.Add(new Tok(TokKind.Float, s[i..j], double.Parse(s[i..j], CultureInfo.InvariantCulture)));
                    }
                    else _toks.Add(new Tok(TokKind.Int, s[i..j], long.Parse(s[i..j], CultureInfo.InvariantCulture)));
                    i = j;
                }
                else if (c is '\'' or '"')
                {
                    var sb = new StringBuilder();
                    int j = i + 1;
                    for (; j < s.Length && s[j] != c; j++)
                    {
                        if (s[j] != '\\' || j + 1 >= s.Length) { sb.Append(s[j]); continue; }
                        j++;
                        sb.Append(s[j] switch
                        {
                            'n' => '\n', 't' => '\t', 'r' => '\r', '\\' => '\\', '\'' => '\'', '"' => '"',
                            _ => throw ChatTemplateException.Unsupported($"the string escape '\\{s[j]}'"),
                        });
                    }
                    if (j >= s.Length) throw new ChatTemplateException("an unterminated string literal");
                    _toks.Add(new Tok(TokKind.String, s[i..(j + 1)], sb.ToString()));
                    i = j + 1;
                }
                else
                {
                    string two = i + 1 < s.Length ? s.Substring(i, 2) : "";
                    string op = two is "==" or "!=" or "<=" or ">=" or "//" or "**" ? two : c.ToString();
                    if (op is "//" or "**" or "/" or "{" or "}") throw ChatTemplateException.Unsupported($"the operator '{op}'");
                    if (!"+-*%~<>=!()[].,:|".Contains(op[0], StringComparison.Ordinal)) throw ChatTemplateException.Unsupported($"the character '{op}' in an expression");
                    _toks.Add(new Tok(TokKind.Op, op));
                    i += op.Length;
                }
            }
            _toks.Add(new Tok(TokKind.End, "end of expression"));
        }

        public Tok Peek(int ahead = 0) => _toks[Math.Min(_pos + ahead, _toks.Count - 1)];
        public Tok Next() => _toks[Math.Min(_pos++, _toks.Count - 1)];
        public bool AtEnd => Peek().Kind == TokKind.End;

        public void Expect(string text)
        {
            var t = Next();
            if (t.Text != text || t.Kind is TokKind.String) throw new ChatTemplateException($"'{text}' expected, found '{t.Text}'");
        }

        public bool Accept(string text)
        {
            if (Peek().Kind is TokKind.String || Peek().Text != text) return false;
            _pos++;
            return true;
        }
    }

    sealed class ExprParser(ExprLexer lex)
    {
        static readonly HashSet<string> Filters = ["trim", "length"];
        static readonly HashSet<string> Methods = ["strip", "lstrip", "rstrip"];
        static readonly HashSet<string> Tests = ["defined", "undefined", "none", "string"];

        public static Expr Parse(string source) => ParseRest(new ExprLexer(source));

        public static Expr ParseRest(ExprLexer lex)
        {
            var e = new ExprParser(lex).Expression();
            if (!lex.AtEnd) throw new ChatTemplateException($"'{lex.Peek().Text}' after an expression");
            return e;
        }

        /// <summary>The iterable of a for loop (a trailing 'if' filter or 'recursive' is refused).</summary>
        public static Expr ParseFor(ExprLexer lex)
        {
            var e = new ExprParser(lex).Or();
            if (lex.Peek().Text is "if") throw ChatTemplateException.Unsupported("a filtered for loop ('for x in items if ...')");
            if (lex.Peek().Text is "recursive") throw ChatTemplateException.Unsupported("a recursive for loop");
            if (!lex.AtEnd) throw new ChatTemplateException($"'{lex.Peek().Text}' after a for loop's items");
            return e;
        }

        Expr Expression()
        {
            var e = Or();
            if (!lex.Accept("if")) return e;
            var condition = Or();
            return new Conditional(e, condition, lex.Accept("else") ? Expression() : null);
        }

        Expr Or()
        {
            var e = And();
            while (lex.Accept("or")) e = new BinaryExpr("or", e, And());
            return e;
        }

        Expr And()
        {
            var e = Not();
            while (lex.Accept("and")) e = new BinaryExpr("and", e, Not());
            return e;
        }

        Expr Not() => lex.Accept("not") ? new NotExpr(Not()) : Comparison();

        Expr Comparison()
        {
            var e = Concat();
            while (true)
            {
                var t = lex.Peek();
                if (t.Kind == TokKind.Op && t.Text is "==" or "!=" or "<" or ">" or "<=" or ">=")
                {
                    lex.Next();
                    e = new BinaryExpr(t.Text, e, Concat());
                }
                else if (t.Kind == TokKind.Name && t.Text == "in")
                {
                    lex.Next();
                    e = new BinaryExpr("in", e, Concat());
                }
                else if (t.Kind == TokKind.Name && t.Text == "not" && lex.Peek(1).Text == "in")
                {
                    lex.Next();
                    lex.Next();
                    e = new BinaryExpr("not in", e, Concat());
                }
                else if (t.Kind == TokKind.Name && t.Text == "is")
                {
                    lex.Next();
                    bool negated = lex.Accept("not");
                    var test = lex.Next();
                    if (test.Kind != TokKind.Name || !Tests.Contains(test.Text)) throw ChatTemplateException.Unsupported($"the test 'is {test.Text}'");
                    e = new TestExpr(e, test.Text, negated);
                }
                else return e;
            }
        }

        Expr Concat()
        {
            var e = Additive();
            while (lex.Accept("~")) e = new BinaryExpr("~", e, Additive());
            return e;
        }

        Expr Additive()
        {
            var e = Multiplicative();
            while (lex.Peek() is { Kind: TokKind.Op, Text: "+" or "-" } t)
            {
                lex.Next();
                e = new BinaryExpr(t.Text, e, Multiplicative());
            }
            return e;
        }

        Expr Multiplicative()
        {
            var e = Unary();
            while (lex.Peek() is { Kind: TokKind.Op, Text: "*" or "%" } t)
            {
                lex.Next();
                e = new BinaryExpr(t.Text, e, Unary());
            }
            return e;
        }

        Expr Unary() => lex.Accept("-") ? new NegateExpr(Unary()) : Postfix();

        Expr Postfix()
        {
            var e = Primary();
            while (true)
            {
                if (lex.Accept("."))
                {
                    var member = lex.Next();
                    if (member.Kind != TokKind.Name) throw new ChatTemplateException($"'.{member.Text}'");
                    if (lex.Accept("("))
                    {
                        if (!Methods.Contains(member.Text)) throw ChatTemplateException.Unsupported($"the method '.{member.Text}()'");
                        if (!lex.Accept(")")) throw ChatTemplateException.Unsupported($"arguments to '.{member.Text}()'");
                        e = new Transform(e, "method", member.Text);
                    }
                    else e = new Attr(e, member.Text);
                }
                else if (lex.Accept("["))
                {
                    Expr? start = lex.Peek().Text == ":" ? null : Expression();
                    if (lex.Accept(":"))
                    {
                        Expr? stop = lex.Peek().Text == "]" ? null : Expression();
                        if (lex.Peek().Text == ":") throw ChatTemplateException.Unsupported("a slice with a step ('[a:b:c]')");
                        e = new SliceExpr(e, start, stop);
                    }
                    else e = new Subscript(e, start!);
                    lex.Expect("]");
                }
                else if (lex.Accept("|"))
                {
                    var filter = lex.Next();
                    if (filter.Kind != TokKind.Name || !Filters.Contains(filter.Text)) throw ChatTemplateException.Unsupported($"the filter '| {filter.Text}'");
                    if (lex.Peek().Text == "(") throw ChatTemplateException.Unsupported($"arguments to the filter '| {filter.Text}'");
                    e = new Transform(e, "filter", filter.Text);
                }
                else if (lex.Peek().Text == "(" && lex.Peek().Kind == TokKind.Op)
                    throw ChatTemplateException.Unsupported("calling a value");
                else return e;
            }
        }

        Expr Primary()
        {
            var t = lex.Next();
            switch (t.Kind)
            {
                case TokKind.String:
                    var s = (string)t.Value!;
                    while (lex.Peek().Kind == TokKind.String) s += (string)lex.Next().Value!;   // adjacent literals join, as in Python
                    return new Literal(s);
                case TokKind.Int:
                case TokKind.Float:
                    return new Literal(t.Value);
                case TokKind.Name:
                    switch (t.Text)
                    {
                        case "true" or "True": return new Literal(true);
                        case "false" or "False": return new Literal(false);
                        case "none" or "None": return new Literal(null);
                        case "raise_exception":
                            lex.Expect("(");
                            var message = Expression();
                            lex.Expect(")");
                            return new RaiseExpr(message);
                    }
                    if (lex.Peek().Text == "(" && lex.Peek().Kind == TokKind.Op) throw ChatTemplateException.Unsupported($"the function '{t.Text}()'");
                    return new Name(t.Text);
                case TokKind.Op when t.Text == "(":
                    var inner = Expression();
                    if (lex.Peek().Text == ",") throw ChatTemplateException.Unsupported("tuples");
                    lex.Expect(")");
                    return inner;
                case TokKind.Op when t.Text == "[":
                    var items = new List<Expr>();
                    while (!lex.Accept("]"))
                    {
                        items.Add(Expression());
                        if (!lex.Accept(",")) { lex.Expect("]"); break; }
                    }
                    return new ListExpr(items);
                default:
                    throw new ChatTemplateException(t.Kind == TokKind.End ? "an expression that ends early" : $"'{t.Text}' where a value belongs");
            }
        }
    }
}

/// <summary>
/// A chat template this server cannot render: a construct outside the supported Jinja subset (the message names it),
/// a <c>raise_exception</c> of the template (<see cref="Raised"/>), or an operation on values it cannot take.
/// </summary>
public sealed class ChatTemplateException(string message, bool raised = false)
    : Exception(raised ? message : "chat template: " + message)
{
    /// <summary>A construct outside the subset: "chat template: not supported: &lt;what&gt;".</summary>
    internal static ChatTemplateException Unsupported(string what) => new("not supported: " + what);

    /// <summary>The template itself raised it (its message refuses the conversation).</summary>
    public bool Raised { get; } = raised;
}
