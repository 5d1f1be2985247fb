"""The run directory's stored state: orbax checkpoints, metrics.jsonl, wandb tracking."""
