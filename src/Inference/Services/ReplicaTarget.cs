using System.Net;
using System.Net.Sockets;

namespace Rlhf.Inference.Services;

/// <summary>
/// Where rollout replicas are: one fixed address (<c>http://host:port</c>), or a DNS name re-resolved on every call of
/// a <see cref="Serving.ReplicaPool"/> (<c>dns:///name:port</c>, gRPC's naming), one replica per address it resolves to. On a
/// cluster the name is a headless Service, whose DNS answer lists the ready pods.
/// </summary>
public sealed record ReplicaTarget
{
    const string DnsPrefix = "dns:///";

    ReplicaTarget(string text, string? address, string? host, int port) => (Text, Address, Host, Port) = (text, address, host, port);

    /// <summary>As given.</summary>
    public string Text { get; }
    /// <summary>The fixed address (<c>http://host:port</c>); null for a DNS name.</summary>
    public string? Address { get; }
    /// <summary>The DNS name to resolve; null for a fixed address.</summary>
    public string? Host { get; }
    /// <summary>The port of every resolved address (0 for a fixed address).</summary>
    public int Port { get; }

    /// <summary>Reads <c>http(s)://host:port</c> or <c>dns:///name:port</c>; anything else throws <see cref="ArgumentException"/> saying what to give.</summary>
    public static ReplicaTarget Parse(string text)
    {
        if (text.StartsWith(DnsPrefix, StringComparison.OrdinalIgnoreCase))
        {
            string rest = text[DnsPrefix.Length..];
            int colon = rest.LastIndexOf(':');
            if (colon <= 0 || rest.Contains('/') || !int.TryParse(rest[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
                throw new ArgumentException($"'{text}' is not a DNS replica target; give dns:///name:port (e.g. dns:///rollout.rlhf.svc.cluster.local:7001).");
            return new ReplicaTarget(text, null, rest[..colon], port);
        }
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || uri.AbsolutePath is not ("" or "/"))
            throw new ArgumentException($"'{text}' is not a replica address; give http://host:port or dns:///name:port.");
        return new ReplicaTarget(text, text.TrimEnd('/'), null, 0);
    }

    /// <summary>The replica addresses now: the fixed address, or <c>http://ip:port</c> per address the name resolves to.</summary>
    public async Task<IReadOnlyList<string>> ResolveAsync(CancellationToken cancellationToken = default) =>
        Address is not null ? [Address] : Addresses(await Dns.GetHostAddressesAsync(Host!, cancellationToken), Port);

    /// <summary>One <c>http://ip:port</c> per distinct address (IPv6 in brackets), IPv4 first, each family in byte order.</summary>
    public static IReadOnlyList<string> Addresses(IEnumerable<IPAddress> addresses, int port) =>
        [.. addresses.Distinct()
            .OrderBy(a => a.AddressFamily == AddressFamily.InterNetwork ? 0 : 1)
            .ThenBy(a => Convert.ToHexString(a.GetAddressBytes()), StringComparer.Ordinal)
            .Select(a => new UriBuilder("http", a.ToString(), port).Uri.GetLeftPart(UriPartial.Authority))];
}
