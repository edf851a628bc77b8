"""Training: loop, optimisers and schedules, checkpoints, DDP launcher, LR finder."""
