using Grpc.Core;
using Rlhf.Training.Service.Grpc;

namespace Rlhf.Training.Service;

/// <summary>gRPC <c>rlhf.training.v1.Runs</c>: <c>WatchMetrics</c> streams a run's step events (the same rows as GET /v1/runs/{id}/metrics).</summary>
public sealed class RunsGrpcService(TrainRuns runs) : Runs.RunsBase
{
    /// <inheritdoc/>
    public override async Task WatchMetrics(WatchMetricsRequest request, IServerStreamWriter<MetricsRow> responseStream, ServerCallContext context)
    {
        if (runs.Get(request.RunId) is null) throw new RpcException(new Status(StatusCode.NotFound, $"No run '{request.RunId}'."));
        int sent = 0;
        while (!context.CancellationToken.IsCancellationRequested)
        {
            var change = runs.NextChange();
            bool final = runs.Get(request.RunId)!.IsFinal;
            foreach (var r in runs.Metrics(request.RunId, sent))
            {
                sent++;
                var row = new MetricsRow { Stage = (string)r["stage"]!, Step = (int)r["step"]!, Total = (int)r["total"]! };
                foreach (var (k, v) in r["metrics"]!.AsObject())
                    row.Values[k] = v!.GetValueKind() == System.Text.Json.JsonValueKind.Number ? (double)v : double.NaN;
                await responseStream.WriteAsync(row, context.CancellationToken);
            }
            if (!request.Follow || final) return;
            await change.WaitAsync(context.CancellationToken);
        }
    }
}
