return Rlhf.Inference.Serving.ServeCommand.RunStandalone(args);
