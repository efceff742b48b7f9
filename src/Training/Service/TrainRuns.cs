using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Rlhf.Training.Common;
using Rlhf.Training.Pipeline;

namespace Rlhf.Training.Service;

/// <summary>A request the client must change (HTTP 400).</summary>
public sealed class RunRequestException(string message) : Exception(message);

/// <summary>
/// The training server's runs: a durable queue executed one run at a time on a worker thread, each run a stage
/// (<see cref="IStage"/>) driven with a cancellation token and a step observer. A run that was running when the
/// server died is queued again on start and resumes from its checkpoint.
/// </summary>
public sealed class TrainRuns : IDisposable
{
    /// <summary>Longest string a config may hold.</summary>
    public const int MaxStringLength = 4096;

    readonly RunStore _store;
    readonly string? _dataRoot;
    readonly ILogger _log;
    readonly object _gate = new();
    readonly Dictionary<string, RunRecord> _runs = [];
    readonly Dictionary<string, List<JsonObject>> _metrics = [];
    readonly SemaphoreSlim _wake = new(0);
    readonly CancellationTokenSource _stopping = new();
    TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    CancellationTokenSource? _current;
    Thread? _worker;
    long _sequence;

    /// <summary>Loads the stored runs; those left running by a dead server go back to the queue (they resume).</summary>
    public TrainRuns(RunStore store, string? dataRoot, ILogger log)
    {
        _store = store;
        _dataRoot = dataRoot is null ? null : Path.GetFullPath(dataRoot);
        _log = log;
        foreach (var run in store.LoadAll())
        {
            var r = run;
            if (r.Status == RunStatus.Running)
            {
                r = r.CancelRequested ? r with { Status = RunStatus.Cancelled, Finished = DateTimeOffset.UtcNow } : r with { Status = RunStatus.Queued };
                store.Save(r);
                _log.LogInformation("run {Id}: was running when the server stopped; {What}.", r.Id, r.Status == RunStatus.Queued ? "it resumes from its checkpoint" : "cancelled as asked");
            }
            _runs[r.Id] = r;
            _metrics[r.Id] = Dedup(store.ReadMetrics(r.Id));
            _sequence = Math.Max(_sequence, r.Sequence);
        }
    }

    /// <summary>Starts the worker.</summary>
    public void Start()
    {
        _worker = new Thread(Work) { IsBackground = true, Name = "train-runs" };
        _worker.Start();
    }

    /// <summary>The output folder of a run.</summary>
    public string OutDir(string id) => _store.OutDir(id);

    /// <summary>Validates and queues a run; bad input throws <see cref="RunRequestException"/> with the CLI's message.</summary>
    public RunRecord Submit(string? stage, JsonNode? config)
    {
        if (stage is null || !Stages.Names.Contains(stage))
            throw new RunRequestException($"stage must be one of {string.Join(", ", Stages.Names)}; got {(stage is null ? "nothing" : $"'{Clip(stage)}'")}.");
        if (config is not JsonObject cfg) throw new RunRequestException("config must be a JSON object (the same JSON the CLI's --config takes).");
        cfg = (JsonObject)cfg.DeepClone();
        if (cfg.ContainsKey("out")) throw new RunRequestException("config: out is set by the server (each run writes to its own folder); leave it out.");
        CheckStrings(cfg, "");
        if (_dataRoot is not null) ConfinePaths(cfg, "");
        try { Stages.FromJson(stage, cfg); }
        catch (Exception e) when (e is InvalidDataException or ArgumentException or JsonException or InvalidOperationException or FormatException)
        { throw new RunRequestException(ErrorLines.OneLine(e.Message)); }

        RunRecord run;
        lock (_gate)
        {
            run = new RunRecord
            {
                Id = $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Guid.NewGuid().ToString("N")[..6]}", Stage = stage, Sequence = ++_sequence,
                Status = RunStatus.Queued, Config = cfg, Created = DateTimeOffset.UtcNow,
            };
            Directory.CreateDirectory(_store.RunDir(run.Id));
            _store.Save(run);
            _runs[run.Id] = run;
            _metrics[run.Id] = [];
        }
        _wake.Release();
        Changed();
        return run;
    }

    /// <summary>Every run, oldest first.</summary>
    public List<RunRecord> List()
    {
        lock (_gate) return [.. _runs.Values.OrderBy(r => r.Sequence)];
    }

    /// <summary>One run, or null.</summary>
    public RunRecord? Get(string id)
    {
        lock (_gate) return _runs.GetValueOrDefault(id);
    }

    /// <summary>The run's summary.json, when it has one.</summary>
    public JsonNode? Summary(string id)
    {
        string f = Path.Combine(_store.OutDir(id), "summary.json");
        return File.Exists(f) ? JsonNode.Parse(File.ReadAllText(f)) : null;
    }

    /// <summary>
    /// Step events so far from position <paramref name="from"/> on (one per step of each stage; a step redone after a
    /// resume replaces the earlier one in place).
    /// </summary>
    public List<JsonObject> Metrics(string id, int from = 0)
    {
        lock (_gate) return _metrics.TryGetValue(id, out var m) ? [.. m.Skip(from).Select(r => (JsonObject)r.DeepClone())] : [];
    }

    /// <summary>
    /// A queued run is cancelled now; a running one stops at its next step boundary (checkpoint written). Returns the
    /// record, or null for an unknown id.
    /// </summary>
    public RunRecord? Cancel(string id)
    {
        lock (_gate)
        {
            if (!_runs.TryGetValue(id, out var r)) return null;
            if (r.Status == RunStatus.Queued) r = Update(r with { Status = RunStatus.Cancelled, Finished = DateTimeOffset.UtcNow });
            else if (r.Status == RunStatus.Running)
            {
                r = Update(r with { CancelRequested = true });
                _current?.Cancel();
            }
            return r;
        }
    }

    /// <summary>Queues a cancelled or failed run again; it continues from its checkpoint. Null for an unknown id.</summary>
    public RunRecord? Resume(string id)
    {
        RunRecord r;
        lock (_gate)
        {
            if (!_runs.TryGetValue(id, out r!)) return null;
            if (r.Status is not (RunStatus.Cancelled or RunStatus.Failed))
                throw new RunRequestException($"run {id} is {r.Status.ToString().ToLowerInvariant()}; only a cancelled or failed run can be resumed.");
            r = Update(r with { Status = RunStatus.Queued, Sequence = ++_sequence, Error = null, CancelRequested = false });
        }
        _wake.Release();
        return r;
    }

    /// <summary>Completes when anything changes (a step event, a status).</summary>
    public Task NextChange()
    {
        lock (_gate) return _changed.Task;
    }

    void Changed()
    {
        TaskCompletionSource done;
        lock (_gate)
        {
            done = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        done.TrySetResult();
    }

    RunRecord Update(RunRecord r)
    {
        lock (_gate)
        {
            _store.Save(r);
            _runs[r.Id] = r;
        }
        Changed();
        return r;
    }

    void Work()
    {
        while (!_stopping.IsCancellationRequested)
        {
            RunRecord? next;
            lock (_gate) next = _runs.Values.Where(r => r.Status == RunStatus.Queued).OrderBy(r => r.Sequence).FirstOrDefault();
            if (next is null)
            {
                try { _wake.Wait(_stopping.Token); } catch (OperationCanceledException) { return; }
                continue;
            }
            Execute(next);
        }
    }

    void Execute(RunRecord run)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        lock (_gate)
        {
            if (_runs[run.Id].Status != RunStatus.Queued) return;   // cancelled meanwhile
            _current = cts;
            run = Update(_runs[run.Id] with { Status = RunStatus.Running, Started = DateTimeOffset.UtcNow, Attempts = run.Attempts + 1 });
        }
        _log.LogInformation("run {Id}: {Stage} {What}.", run.Id, run.Stage, run.Attempts > 1 ? "resuming" : "starting");
        try
        {
            var stage = Stages.FromJson(run.Stage, run.Config).WithOut(_store.OutDir(run.Id));
            var control = new RunControl
            {
                Progress = false, Cancel = cts.Token, Logger = new RunLogger(run.Id, _log),
                OnStep = e => OnStep(run.Id, e),
            };
            if (stage.Name != "pipeline") control = Stages.ResumeOrStart(stage.Out, control);   // the pipeline resumes its stages itself
            stage.Run(control);
            Finish(run.Id, RunStatus.Succeeded, null);
        }
        catch (StageCancelledException) when (_stopping.IsCancellationRequested)
        {
            Finish(run.Id, RunStatus.Queued, null);   // server shutdown: the run continues when the server starts again
        }
        catch (StageCancelledException) { Finish(run.Id, RunStatus.Cancelled, null); }
        catch (Exception e)
        {
            string line = ErrorLines.For(e);
            Finish(run.Id, RunStatus.Failed, line.StartsWith("error: ", StringComparison.Ordinal) ? line[7..] : line);
            _log.LogWarning("run {Id}: failed: {Error}", run.Id, line);
        }
        finally
        {
            lock (_gate) _current = null;
        }
    }

    void Finish(string id, RunStatus status, string? error)
    {
        lock (_gate) Update(_runs[id] with { Status = status, Error = error, Finished = DateTimeOffset.UtcNow, CancelRequested = false });
        _log.LogInformation("run {Id}: {Status}.", id, status.ToString().ToLowerInvariant());
    }

    void OnStep(string id, StageEvent e)
    {
        var row = new JsonObject
        {
            ["stage"] = e.Stage, ["step"] = e.Step, ["total"] = e.Total,
            ["metrics"] = JsonSerializer.SerializeToNode(e.Row, ConfigLoader.Json),
        };
        lock (_gate)
        {
            _store.AppendMetrics(id, row);
            Replace(_metrics[id], row);
            _runs[id] = _runs[id] with { CurrentStage = e.Stage, Step = e.Step, Total = e.Total };
            _store.Save(_runs[id]);
        }
        Changed();
    }

    static List<JsonObject> Dedup(List<JsonObject> rows)
    {
        var list = new List<JsonObject>();
        foreach (var r in rows) Replace(list, r);
        return list;
    }

    /// <summary>Adds a step event, replacing an earlier one of the same stage and step (a step redone after a resume).</summary>
    static void Replace(List<JsonObject> rows, JsonObject row)
    {
        string stage = (string)row["stage"]!;
        int step = (int)row["step"]!;
        int i = rows.FindIndex(r => (string)r["stage"]! == stage && (int)r["step"]! == step);
        if (i >= 0) rows[i] = row;
        else rows.Add(row);
    }

    void CheckStrings(JsonNode? node, string key)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (k, v) in o)
                {
                    if (k.Length > 200) throw new RunRequestException($"config: a key of {k.Length} characters; keys are short names.");
                    CheckStrings(v, key.Length == 0 ? k : $"{key}.{k}");
                }
                break;
            case JsonArray a:
                foreach (var v in a) CheckStrings(v, key);
                break;
            case JsonValue v when v.TryGetValue<string>(out var s) && s.Length > MaxStringLength:
                throw new RunRequestException($"config: {key} is {s.Length} characters long; at most {MaxStringLength}.");
        }
    }

    /// <summary>Keys that name files or folders: <c>*_file</c>, <c>*_model</c>, <c>*_from</c>, <c>model_config</c>.</summary>
    internal static bool IsPathKey(string key) =>
        key.EndsWith("_file", StringComparison.Ordinal) || key.EndsWith("_model", StringComparison.Ordinal) ||
        key.EndsWith("_from", StringComparison.Ordinal) || key == "model_config";

    /// <summary>Resolves every path the client sent inside --data-root (relative paths are taken from it) or refuses it.</summary>
    void ConfinePaths(JsonObject o, string prefix)
    {
        foreach (var (k, v) in o.ToList())
        {
            string key = prefix.Length == 0 ? k : $"{prefix}.{k}";
            if (v is JsonObject section) ConfinePaths(section, key);
            else if (IsPathKey(k) && v is JsonValue value && value.TryGetValue<string>(out var path))
                o[k] = Confined.Resolve(_dataRoot!, path)
                    ?? throw new RunRequestException($"config: {key} '{Clip(path)}' is outside the server's --data-root; give a path inside it (relative paths are taken from it).");
        }
    }

    static string Clip(string s) => s.Length <= 80 ? s : s[..80] + "…";

    /// <summary>Stops the worker: the running stage stops at its next step boundary and is queued again for the next start.</summary>
    public void Dispose()
    {
        _stopping.Cancel();
        if (_worker?.Join(TimeSpan.FromSeconds(30)) == false) return;   // a step still running: the process ends around it
        _stopping.Dispose();
        _wake.Dispose();
    }

    /// <summary>A stage's messages, prefixed with the run id, into the server's log.</summary>
    sealed class RunLogger(string id, ILogger inner) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => inner.BeginScope(state);
        public bool IsEnabled(LogLevel logLevel) => inner.IsEnabled(logLevel);
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            inner.Log(logLevel, eventId, $"run {id}: {formatter(state, exception)}", exception, (s, _) => s);
    }
}
