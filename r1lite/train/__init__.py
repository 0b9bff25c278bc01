"""Training: the GRPO run config, the loss, the trainer and its phases (rollouts, the cold start,
SFT, on-policy distillation), checkpoints and many processes."""
