return Rlhf.Training.Cli.RlhfCommand.Run(args);
