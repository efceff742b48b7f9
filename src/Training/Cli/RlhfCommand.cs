namespace Rlhf.Training.Cli;

/// <summary>The `rlhf` command line (placeholder until the commands land).</summary>
internal static class RlhfCommand
{
    public static int Run(string[] args)
    {
        Console.WriteLine("rlhf");
        return 0;
    }
}
