using System.Net;
using Rlhf.Inference.Serving;

namespace Rlhf.Training.Service;

/// <summary>Settings of <c>rlhf serve train</c>.</summary>
public sealed record TrainServeOptions
{
    /// <summary>TCP port (HTTP/JSON and gRPC share it).</summary>
    public required int Port { get; init; }
    /// <summary>Address to listen on; 127.0.0.1 by default.</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>Folder of the run records and outputs (one sub-folder per run).</summary>
    public required string RunsDir { get; init; }
    /// <summary>File holding the bearer token callers must send.</summary>
    public string? TokenFile { get; init; }
    /// <summary>When set, every path in a submitted config must resolve inside this folder (relative paths are taken from it).</summary>
    public string? DataRoot { get; init; }
    /// <summary>Serve without a token (loopback only).</summary>
    public bool InsecureNoAuth { get; init; }
    /// <summary>Logs as JSON lines, a request log included (<c>--log-format json</c>).</summary>
    public bool JsonLogs { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the option to change.</summary>
    public TrainServeOptions Validate()
    {
        if (!IPAddress.TryParse(Host, out var address)) throw new ArgumentException($"--host must be an IP address (127.0.0.1, 0.0.0.0, ::); got '{Host}'.");
        if (Port is < 1 or > 65535) throw new ArgumentException($"--port must be in [1, 65535]; got {Port}.");
        if (TokenFile is not null && !File.Exists(TokenFile)) throw new ArgumentException($"--token-file '{TokenFile}' does not exist.");
        if (TokenFile is null && !InsecureNoAuth)
            throw new ArgumentException("--token-file is required: the training server runs jobs and serves files (pass --insecure-no-auth to serve a loopback address without one).");
        if (TokenFile is null && !IPAddress.IsLoopback(address))
            throw new ArgumentException($"--insecure-no-auth only serves a loopback address; --host {Host} needs --token-file.");
        if (TokenFile is not null && InsecureNoAuth)
            throw new ArgumentException("--insecure-no-auth and --token-file exclude each other.");
        if (DataRoot is not null && !Directory.Exists(DataRoot)) throw new ArgumentException($"--data-root '{DataRoot}' is not a folder.");
        return this;
    }
}
