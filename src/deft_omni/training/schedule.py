"""The learning-rate schedule: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math


class WarmupSchedule:
    """LambdaLR factor: linear warm-up, then constant or cosine decay to ``min_lr_ratio``.

    A callable object (not a lambda) so LambdaLR saves its (plain) attributes in checkpoints.
    diffusers' ``get_scheduler`` returns LambdaLRs over closures, which checkpoints cannot hold.
    """

    def __init__(self, warmup_steps: int, schedule: str, total_steps: int, min_lr_ratio: float = 0.0):
        self.warmup_steps, self.schedule = int(warmup_steps), str(schedule)
        self.total_steps, self.min_lr_ratio = int(total_steps), float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
