using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace Rlhf.Training.Tests.Serving;

/// <summary>
/// An <c>rlhf-serve</c> process started from the build output on a free 127.0.0.1 port. Start waits (bounded) for its
/// "listening" line; Dispose kills exactly this process and waits for it to end.
/// </summary>
internal sealed class ServerProcess : IDisposable
{
    static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);
    readonly Process _process;
    readonly StringBuilder _output = new();

    ServerProcess(Process process, int port)
    {
        _process = process;
        Port = port;
    }

    /// <summary>The port it listens on.</summary>
    public int Port { get; }

    /// <summary>http://127.0.0.1:port</summary>
    public string Address => $"http://127.0.0.1:{Port}";

    /// <summary>What it printed so far (stdout and stderr).</summary>
    public string Output { get { lock (_output) return _output.ToString(); } }

    /// <summary>The rlhf-serve.dll built next to this test project (same configuration).</summary>
    public static string ServerDll
    {
        get
        {
            var dir = new DirectoryInfo(AppContext.BaseDirectory);   // tests/Rlhf.Training.Tests/bin/<Config>/net10.0/
            string tfm = dir.Name, config = dir.Parent!.Name;
            var root = dir;
            while (root is not null && !File.Exists(Path.Combine(root.FullName, "Rlhf.sln"))) root = root.Parent;
            if (root is null) throw new InvalidOperationException("Rlhf.sln not found above the test output.");
            string dll = Path.Combine(root.FullName, "src", "Inference", "Server", "bin", config, tfm, "rlhf-serve.dll");
            return File.Exists(dll) ? dll : throw new FileNotFoundException($"{dll} is missing; build Rlhf.sln first.");
        }
    }

    /// <summary>Starts <c>rlhf-serve &lt;args&gt; --port N</c> and waits until it listens.</summary>
    public static ServerProcess Start(params string[] args) => Start(0, args);

    /// <summary>Starts <c>rlhf-serve &lt;args&gt; --port N</c> on <paramref name="fixedPort"/> (0 = a free one) and waits until it listens.</summary>
    public static ServerProcess Start(int fixedPort, params string[] args)
    {
        for (int attempt = 0; ; attempt++)
        {
            int port = fixedPort > 0 ? fixedPort : FreePort();
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(ServerDll);
            foreach (var a in args) psi.ArgumentList.Add(a);
            psi.ArgumentList.Add("--port");
            psi.ArgumentList.Add(port.ToString(System.Globalization.CultureInfo.InvariantCulture));
            var p = Process.Start(psi)!;
            var server = new ServerProcess(p, port);
            using var listening = new ManualResetEventSlim();
            p.OutputDataReceived += (_, e) =>
            {
                if (e.Data is null) return;
                lock (server._output) server._output.AppendLine(e.Data);
                if (e.Data.Contains("listening on", StringComparison.Ordinal)) listening.Set();
            };
            p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (server._output) server._output.AppendLine(e.Data); };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            var deadline = DateTime.UtcNow + StartTimeout;
            while (!listening.Wait(200))
            {
                if (p.HasExited || DateTime.UtcNow > deadline)
                {
                    string output = server.Output;
                    server.Dispose();
                    if (attempt < 2 && fixedPort == 0 && output.Contains("address already in use", StringComparison.OrdinalIgnoreCase)) goto retry;
                    throw new InvalidOperationException($"rlhf-serve did not start within {StartTimeout.TotalSeconds} s (exit: {(p.HasExited ? p.ExitCode : "running")}):\n{output}");
                }
            }
            return server;
        retry:;
        }
    }

    /// <summary>Freezes the process (SIGSTOP): it keeps its sockets, so calls to it hang until their deadline or its death.</summary>
    public void Pause()
    {
        if (Sys.kill(_process.Id, Sys.SIGSTOP) != 0) throw new InvalidOperationException($"kill(SIGSTOP) of {_process.Id} failed: errno {Marshal.GetLastPInvokeError()}.");
    }

    /// <summary>Kills the process (SIGKILL, this process only) and waits for it.</summary>
    public void Kill()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: false);
            _process.WaitForExit(10_000);
        }
    }

    static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public void Dispose()
    {
        try { Kill(); }
        catch (InvalidOperationException) { }   // never started
        _process.Dispose();
    }
}

static partial class Sys
{
    public const int SIGSTOP = 19;   // Linux

    [LibraryImport("libc", SetLastError = true)]
    public static partial int kill(int pid, int sig);
}
