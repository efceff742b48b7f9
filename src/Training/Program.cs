Rlhf.Training.Common.HostAllocator.KeepFreedMemory();
return Rlhf.Training.Cli.RlhfCommand.Run(args);
