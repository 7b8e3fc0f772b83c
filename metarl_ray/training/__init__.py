"""The training loop and what it writes: rollout worker, learner, checkpoints, run directories, metrics."""
