namespace Rlhf.Training.Common;

/// <summary>How a failure reaches a person, in the CLI and the training service alike: one line.</summary>
public static class ErrorLines
{
    /// <summary>
    /// The one line a failure prints: <c>error: message</c> for failures a user causes and can fix (bad files,
    /// configs, model folders, ONNX graphs, I/O); anything else is a fault of the program and says so.
    /// </summary>
    public static string For(Exception e)
    {
        e = Innermost(e);
        string message = OneLine(e.Message);
        return IsUserError(e)
            ? $"error: {message}"
            : $"error: internal error ({e.GetType().Name}): {message} (rerun with --verbose for the stack trace)";
    }

    /// <summary>Failures caused by inputs, settings or the environment rather than by a bug.</summary>
    public static bool IsUserError(Exception e) => e is InvalidDataException or Data.DataFileException or IOException
        or InvalidOperationException or ArgumentException or NonFiniteLossException or UnauthorizedAccessException
        or System.Text.Json.JsonException or FormatException or NotSupportedException
        or Microsoft.ML.OnnxRuntime.OnnxRuntimeException or System.Net.Sockets.SocketException or StageCancelledException;

    static Exception Innermost(Exception e) => e switch
    {
        System.Reflection.TargetInvocationException { InnerException: { } i } => Innermost(i),
        TypeInitializationException { InnerException: { } i } => Innermost(i),
        AggregateException { InnerExceptions.Count: 1 } a => Innermost(a.InnerExceptions[0]),
        _ => e,
    };

    /// <summary>Collapses line breaks and runs of spaces so a message is one line.</summary>
    public static string OneLine(string message) =>
        System.Text.RegularExpressions.Regex.Replace(message.ReplaceLineEndings(" "), @"\s{2,}", " ").Trim();
}
