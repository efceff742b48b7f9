using System.Runtime.InteropServices;
using Rlhf.Inference.Serving;

namespace Rlhf.Training.Tests.Serving;

/// <summary><c>rlhf-serve</c> processes started from the build output on 127.0.0.1 (<see cref="ReplicaProcess"/>), and freezing one.</summary>
internal static partial class ServerProcess
{
    /// <summary>The rlhf-serve.dll built next to this test project (same configuration).</summary>
    public static string ServerDll => BuildOutput(Path.Combine("src", "Inference", "Server"), "rlhf-serve.dll");

    /// <summary>The rlhf.dll (the training CLI, <c>rlhf serve train</c>) built next to this test project.</summary>
    public static string RlhfDll => BuildOutput(Path.Combine("src", "Training"), "rlhf.dll");

    static string BuildOutput(string project, string file)
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);   // tests/Rlhf.Training.Tests/bin/<Config>/net10.0/
        string tfm = dir.Name, config = dir.Parent!.Name;
        var root = dir;
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Rlhf.sln"))) root = root.Parent;
        if (root is null) throw new InvalidOperationException("Rlhf.sln not found above the test output.");
        string dll = Path.Combine(root.FullName, project, "bin", config, tfm, file);
        return File.Exists(dll) ? dll : throw new FileNotFoundException($"{dll} is missing; build Rlhf.sln first.");
    }

    /// <summary>
    /// Runs the training CLI (<c>dotnet rlhf.dll args</c>) to its end within <paramref name="deadline"/> (killed and
    /// failed past it), with <paramref name="environment"/> added to its environment; its exit code and stderr + stdout.
    /// </summary>
    public static (int Code, string Output) RunCli(TimeSpan deadline, IReadOnlyDictionary<string, string>? environment, params string[] args) =>
        Run("dotnet", [RlhfDll, .. args], null, deadline, environment);

    /// <summary>
    /// Runs <paramref name="file"/> with <paramref name="args"/> in <paramref name="workingDirectory"/> (null = this
    /// process's) to its end within <paramref name="deadline"/> (killed and failed past it), with
    /// <paramref name="environment"/> added to its environment; its exit code and stderr + stdout.
    /// </summary>
    public static (int Code, string Output) Run(string file, IReadOnlyList<string> args, string? workingDirectory, TimeSpan deadline,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (workingDirectory is not null) psi.WorkingDirectory = workingDirectory;
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        using var p = System.Diagnostics.Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(deadline))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} did not finish in {deadline.TotalSeconds} s");
        }
        p.WaitForExit();
        return (p.ExitCode, err.Result + output.Result);
    }

    /// <summary>Starts <c>rlhf-serve &lt;args&gt; --port N</c> on a free port and waits until it listens.</summary>
    public static ReplicaProcess Start(params string[] args) => Start(0, args);

    /// <summary>Starts <c>rlhf-serve &lt;args&gt; --port N</c> on <paramref name="port"/> (0 = a free one) and waits until it listens.</summary>
    public static ReplicaProcess Start(int port, params string[] args) => StartDll(ServerDll, port, args);

    /// <summary>Starts <c>dotnet &lt;dll&gt; &lt;args&gt; --port N</c> on <paramref name="port"/> (0 = a free one) and waits until it listens.</summary>
    public static ReplicaProcess StartDll(string dll, int port, params string[] args) => ReplicaProcess.Start(["dotnet", dll, .. args], port);

    /// <summary>Freezes the process (SIGSTOP): it keeps its sockets, so calls to it hang until their deadline or its death.</summary>
    public static void Pause(this ReplicaProcess replica)
    {
        if (kill(replica.Id, SIGSTOP) != 0) throw new InvalidOperationException($"kill(SIGSTOP) of {replica.Id} failed: errno {Marshal.GetLastPInvokeError()}.");
        // The signal is delivered asynchronously: wait (bounded) until the kernel reports the process stopped.
        string state = "";
        for (int i = 0; i < 500; i++)
        {
            string stat = File.ReadAllText($"/proc/{replica.Id}/stat");
            state = stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[0];
            if (state is "T" or "t") return;
            Thread.Sleep(10);
        }
        throw new InvalidOperationException($"Process {replica.Id} did not stop after SIGSTOP (state {state}).");
    }

    /// <summary>
    /// Waits (bounded by <paramref name="deadline"/>) until bytes sent to the replica wait unread in the kernel on one of its
    /// connections (<c>/proc/net/tcp</c>: an established socket on its port with a non-empty receive queue). For a frozen
    /// replica this proves that a request reached it and is in flight, without guessing how long that takes.
    /// </summary>
    public static void WaitUntilUnreadRequest(this ReplicaProcess replica, TimeSpan deadline)
    {
        string port = replica.Port.ToString("X4", System.Globalization.CultureInfo.InvariantCulture);
        var end = DateTime.UtcNow + deadline;
        while (true)
        {
            foreach (string line in File.ReadLines("/proc/net/tcp").Skip(1))
            {
                // sl local_address rem_address st tx_queue:rx_queue ...   (addresses as HEXIP:HEXPORT, state 01 = established)
                string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f[1].EndsWith(":" + port, StringComparison.Ordinal) && f[3] == "01" && Convert.ToInt64(f[4].Split(':')[1], 16) > 0) return;
            }
            if (DateTime.UtcNow > end) throw new TimeoutException($"No request reached the replica on port {replica.Port} within {deadline.TotalSeconds} s.");
            Thread.Sleep(10);
        }
    }

    /// <summary>Asks the process to stop (SIGTERM), as Kubernetes and systemd do.</summary>
    public static void Terminate(this ReplicaProcess replica)
    {
        if (kill(replica.Id, SIGTERM) != 0) throw new InvalidOperationException($"kill(SIGTERM) of {replica.Id} failed: errno {Marshal.GetLastPInvokeError()}.");
    }

    const int SIGSTOP = 19, SIGTERM = 15;   // Linux

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int sig);
}
