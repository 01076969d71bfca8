"""Training loop shared by every model: devices, AMP, checkpoints/resume, schedules, metrics, DDP."""
