"""The run itself: a program built from a config, the loop over its steps, evaluation, checkpoints, resuming,
stopping and the workdir it holds."""
