"""Commands that start runs elsewhere or many of them: sweeps, Optuna search, their results, TPU VMs, SLURM."""
