using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Rlhf.Inference.Serving;

/// <summary>
/// A replica (<c>rlhf-serve ...</c> or <c>rlhf serve ...</c>) started as a child process on 127.0.0.1, for benchmarks
/// and tests. <see cref="Start"/> waits (bounded) for its "listening on" line; <see cref="Dispose"/> kills exactly this
/// process and waits for it to end.
/// </summary>
public sealed class ReplicaProcess : IDisposable
{
    /// <summary>How long a replica may take to load its model and listen.</summary>
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);
    readonly Process _process;
    readonly StringBuilder _output = new();

    ReplicaProcess(Process process, int port) => (_process, Port) = (process, port);

    /// <summary>The port it listens on.</summary>
    public int Port { get; }

    /// <summary><c>http://127.0.0.1:port</c></summary>
    public string Address => $"http://127.0.0.1:{Port}";

    /// <summary>The process id.</summary>
    public int Id => _process.Id;

    /// <summary>What it printed so far (stdout and stderr).</summary>
    public string Output { get { lock (_output) return _output.ToString(); } }

    /// <summary>
    /// Runs <paramref name="command"/> (program, then arguments) with <c>--port N</c> appended, <paramref name="port"/> or
    /// a free one (tried again on another port if it was taken meanwhile), and waits until it listens.
    /// </summary>
    public static ReplicaProcess Start(IReadOnlyList<string> command, int port = 0)
    {
        if (command.Count == 0) throw new ArgumentException("No command to start.");
        for (int attempt = 0; ; attempt++)
        {
            int p = port > 0 ? port : FreePort();
            var psi = new ProcessStartInfo(command[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (string a in command.Skip(1)) psi.ArgumentList.Add(a);
            psi.ArgumentList.Add("--port");
            psi.ArgumentList.Add(p.ToString(CultureInfo.InvariantCulture));
            var replica = new ReplicaProcess(Process.Start(psi) ?? throw new InvalidOperationException($"Could not start {command[0]}."), p);
            using var listening = new ManualResetEventSlim();
            replica._process.OutputDataReceived += (_, e) =>
            {
                if (e.Data is null) return;
                lock (replica._output) replica._output.AppendLine(e.Data);
                if (e.Data.Contains("listening on", StringComparison.Ordinal)) listening.Set();
            };
            replica._process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (replica._output) replica._output.AppendLine(e.Data); };
            replica._process.BeginOutputReadLine();
            replica._process.BeginErrorReadLine();
            var deadline = DateTime.UtcNow + StartTimeout;
            while (!listening.Wait(200))
            {
                if (!replica._process.HasExited && DateTime.UtcNow < deadline) continue;
                string output = replica.Output;
                string exit = replica._process.HasExited ? replica._process.ExitCode.ToString(CultureInfo.InvariantCulture) : "still running";
                replica.Dispose();
                if (attempt < 2 && port == 0 && output.Contains("address already in use", StringComparison.OrdinalIgnoreCase)) break;
                throw new InvalidOperationException($"The replica ({string.Join(' ', command)}) did not listen within {StartTimeout.TotalSeconds} s (exit: {exit}):\n{output}");
            }
            if (listening.IsSet) return replica;
        }
    }

    /// <summary>Waits up to <paramref name="timeout"/> for the process to exit; its exit code, or null when it still runs.</summary>
    public int? WaitForExit(TimeSpan timeout) => _process.WaitForExit(timeout) ? _process.ExitCode : null;

    /// <summary>Kills the process (SIGKILL, this process only) and waits for it.</summary>
    public void Kill()
    {
        if (_process.HasExited) return;
        _process.Kill(entireProcessTree: false);
        _process.WaitForExit(10_000);
    }

    static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>Kills the process if it still runs.</summary>
    public void Dispose()
    {
        try { Kill(); }
        catch (InvalidOperationException) { }   // already gone
        _process.Dispose();
    }
}
