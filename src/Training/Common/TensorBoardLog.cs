using TorchSharp;

namespace Rlhf.Training.Common;

/// <summary>
/// A stage's metrics rows as TensorBoard scalars in <c>&lt;stage out&gt;/tensorboard/</c> (<c>tensorboard --logdir</c> on the
/// stage folder, or on the folder above the stages to compare them): one scalar per metrics column, tagged with the column
/// name (<c>loss/policy</c>, <c>eval/gold</c>, …), at the row's step. TorchSharp's <c>SummaryWriter</c> writes the event file
/// (TFRecord framing, <c>Event</c> protobufs) and appends each event with its own open–write–flush–close, so nothing is left
/// buffered or open when a stage ends or fails. Each run of a stage writes a new event file, created with its first step;
/// a resumed run writes only the steps after its checkpoint, and where an interrupted run had logged steps past that
/// checkpoint, TensorBoard drops them when the resumed run's file goes back to an earlier step (a restart's preemption).
/// </summary>
internal sealed class TensorBoardLog(string stageFolder)
{
    /// <summary>The folder inside a stage's output that holds its event files.</summary>
    public const string FolderName = "tensorboard";

    TorchSharp.Modules.SummaryWriter? _writer;

    /// <summary>Where the event files go: <c>&lt;stage folder&gt;/tensorboard</c>.</summary>
    public string Folder { get; } = Path.Combine(stageFolder, FolderName);

    /// <summary>Writes every value of <paramref name="row"/> as a scalar tagged with its column name at <paramref name="step"/> (float32, as TensorBoard stores scalars).</summary>
    public void Add(int step, IReadOnlyDictionary<string, double> row)
    {
        _writer ??= torch.utils.tensorboard.SummaryWriter(Folder);
        foreach (var (tag, value) in row) _writer.add_scalar(tag, (float)value, step);
    }
}
