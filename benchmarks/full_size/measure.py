"""Measuring one training step's memory: live tensor bytes, per-block activations, peak RSS.

:func:`measure_step` tracks one step with :class:`~.tracking.LiveBytes` (everything the step
allocates, by phase) and :class:`~.tracking.BlockProbe` (what each block keeps for the backward).
:func:`run_case` does a whole case in this process, for a fresh forkserver child (benchmarks/
adapters.py's method: glibc's mmap threshold fixed, so peak RSS follows the live tensors): build
the k-layer model with its adapter, one warm-up step on a few tokens (one-time initialisation and
AdamW's states are not the case's cost), the tracked step with peak RSS, ``repeats`` timed steps.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

from .case import Case, make_backbone, make_batch, make_optimizer, make_step, sequence, text_tokens, warm_up_case


def _tensors_of(backbone, step, batch) -> list:
    import torch

    out = [*backbone.denoiser.parameters(), *backbone.denoiser.buffers(), *backbone.vae.parameters()]
    if step.optimizer is not None:
        for state in step.optimizer.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    out += [v for v in batch.values() if isinstance(v, torch.Tensor)]
    out += list(batch["input_images"])
    return out


def static_bytes(backbone, step) -> dict[str, int]:
    """Bytes of what a step does not create: base, adapters, AdamW states, VAE (by part)."""
    from .tracking import storage_bytes

    trained = [p for p in backbone.denoiser.parameters() if p.requires_grad]
    ids = {id(p) for p in trained}
    frozen = [p for p in backbone.denoiser.parameters() if id(p) not in ids]
    states = []
    if step.optimizer is not None:
        for state in step.optimizer.state.values():
            states += [v for k, v in state.items() if k != "step"]
    return {"base": storage_bytes([*frozen, *backbone.denoiser.buffers()]), "adapter": storage_bytes(trained),
            "optimizer": storage_bytes(states), "vae": storage_bytes(backbone.vae.parameters())}


def measure_step(case: Case, backbone, step, batch) -> dict[str, Any]:
    """One tracked step: live bytes (static, after forward, peak), per-block activations."""
    import torch

    from .tracking import BlockProbe, LiveBytes, storage_bytes

    live = LiveBytes()
    live.register(_tensors_of(backbone, step, batch))
    static = live.current
    batch_bytes = storage_bytes([*[v for v in batch.values() if isinstance(v, torch.Tensor)],
                                 *batch["input_images"]])
    probe = BlockProbe(backbone.denoiser.layers, live)
    marks: dict[str, int] = {}

    def hook(phase: str) -> None:
        marks[f"{phase}_current"] = live.current
        marks[f"{phase}_peak"] = live.peak

    def encoded(module, args, kwargs):
        # The VAE has encoded the batch: its transient is a phase of its own (a separate term of
        # the model, the real VAE's), so the step's peak starts counting here.
        if "encode_peak" not in marks:
            marks["encode_peak"] = live.peak
            live.reset_peak()

    handle = backbone.denoiser.register_forward_pre_hook(encoded, with_kwargs=True)
    try:
        with live:
            times = step(hook)
    finally:
        probe.remove()
        handle.remove()
    return {
        "static_bytes": static - batch_bytes, "batch_bytes": batch_bytes, "static_parts": static_bytes(backbone, step),
        "encode_peak": marks["encode_peak"] - static, "held_after_forward": marks["forward_current"] - static,
        "peak_forward": marks["forward_peak"] - static, "peak": live.peak - static, "block_kept": probe.kept(),
        "per_layer": probe.per_layer(), "tracked_step_s": times["step_s"],
    }


def run_case(case: Case, repeats: int = 2, rss: bool = True) -> dict[str, Any]:
    """Build, warm up, measure and time ``case`` in this process; returns one result row."""
    from benchmarks.adapters import _peak_rss, _rss

    t0 = time.perf_counter()
    backbone, groups = make_backbone(case)
    build_s = time.perf_counter() - t0
    optimizer = make_optimizer(groups)
    make_step(case, backbone, optimizer, make_batch(warm_up_case(case), backbone))()
    batch = make_batch(case, backbone)
    step = make_step(case, backbone, optimizer, batch)
    gc.collect()
    row: dict[str, Any] = {"case": case.to_dict(), "key": case.key, "label": case.label,
                           "seq": sequence(batch), "text_tokens": text_tokens(batch, case), "build_s": build_s}
    before = _rss() if rss else 0
    if rss:
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current RSS
            f.write("5")
    row.update(measure_step(case, backbone, step, batch))
    row["rss_step_bytes"] = (_peak_rss() - before) if rss else None
    times = [step() for _ in range(repeats)]
    for key in ("forward_s", "backward_s", "optimizer_s", "step_s"):
        row[key] = statistics.median(t[key] for t in times) if times else None
    row["step_times"] = [t["step_s"] for t in times]
    row["loss"] = float(times[-1]["loss"]) if times else None
    return row
