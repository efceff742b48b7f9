using TorchSharp;

namespace Rlhf.Training.Common;

/// <summary>Where TorchSharp computes: <c>--device cpu|cuda</c>.</summary>
public enum ComputeDevice
{
    /// <summary>The CPU (TorchSharp-cpu, the default build).</summary>
    Cpu,
    /// <summary>An NVIDIA GPU (needs the GPU build: <c>-p:RlhfGpu=true</c>).</summary>
    Cuda,
}

/// <summary>Resolves the run-time device and thread count, failing clearly when CUDA is asked for but absent.</summary>
public static class DeviceSelector
{
    /// <summary>Parses "cpu" or "cuda" (case-insensitive).</summary>
    public static ComputeDevice Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "cpu" => ComputeDevice.Cpu,
        "cuda" or "gpu" => ComputeDevice.Cuda,
        _ => throw new ArgumentException($"Unknown device '{name}': use cpu or cuda."),
    };

    /// <summary>The TorchSharp device for <paramref name="device"/>; throws when CUDA is not available.</summary>
    public static torch.Device Resolve(ComputeDevice device)
    {
        switch (device)
        {
            case ComputeDevice.Cpu:
                return torch.CPU;
            case ComputeDevice.Cuda:
                if (!torch.cuda.is_available())
                    throw new InvalidOperationException(
                        "--device cuda was requested, but CUDA is not available to TorchSharp. This build uses the CPU " +
                        "packages (TorchSharp-cpu); rebuild with `dotnet build -p:RlhfGpu=true` on a machine with an NVIDIA " +
                        "GPU and driver (it swaps in TorchSharp-cuda-linux and Microsoft.ML.OnnxRuntime.Gpu), or use --device cpu.");
                return torch.CUDA;
            default:
                throw new ArgumentOutOfRangeException(nameof(device));
        }
    }

    /// <summary>Sets libtorch's intra-op threads (0 = all cores).</summary>
    public static void SetThreads(int threads)
    {
        int n = threads > 0 ? threads : Environment.ProcessorCount;
        torch.set_num_threads(n);
    }
}
