"""The world judge as a training extension: a concept run scored before, during and after training.

``world=judge`` (Hydra group) adds it.  At the start of a fit it judges the model as it is (the
adapters start as the identity, so this is the base), every ``every_n_steps`` optimizer steps
during training (the retention study's curves), and at the end.  Each judgement generates the
:func:`deft_omni.world.concept.judged_sets` prompts with the world model's sampler defaults and
reads them:

* acquisition: share of ``sks`` objects read as the concept's shape; fidelity: their shape IoU
  against the concept's reference render;
* editability: micro adherence on prompts that combine ``sks`` with other attributes and shapes;
* retention: micro adherence on world prompts without the concept.

Results go to ``<out>/world_judge.json`` (atomic) and, under ``world_judge``, to ``summary.json``;
``<out>/world_judge.png`` shows the concept prompts before and after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
import numpy as np
from PIL import Image

from ..core.atomic import atomic_path, write_json
from ..training.extension import TrainingExtension
from .concept import CONCEPT_JUDGE, judged_sets
from .judged import SamplerSettings, generate_for
from .metrics import WorldScores, evaluate_pairs

RESULTS = "world_judge.json"
GRID = "world_judge.png"


def headline(rows: dict[str, WorldScores]) -> dict[str, float]:
    """The four numbers of a judgement (fractions)."""
    concept, pair, base = rows["concept"], rows["concept_pair"], rows["base"]
    return {"acquisition": concept.per_attribute["shape"], "fidelity": concept.shape_iou,
            "editability": (concept.micro * concept.n + pair.micro * pair.n) / (concept.n + pair.n),
            "retention": base.micro}


class WorldJudgeExtension(TrainingExtension):
    name = "world_judge"

    def __init__(self, n: int = 24, every_n_steps: int = 0, sample_steps: Optional[int] = None, seed: int = 123,
                 **_: Any) -> None:
        self.n, self.every_n_steps, self.sample_steps, self.seed = int(n), int(every_n_steps), sample_steps, int(seed)
        self.sets = judged_sets(self.n, self.seed)
        self.results: dict[str, Any] = {"before": None, "after": None, "history": []}
        self.module = None
        self._images: dict[str, list[np.ndarray]] = {}

    def setup(self, module: Any) -> None:
        self.module = module
        folder = getattr(module.backbone, "path", None)
        info = Path(str(folder)) / "world.json" if folder else None
        data = json.loads(info.read_text()) if info is not None and info.is_file() else {}
        self.sampler = SamplerSettings.from_info(data, self.sample_steps)
        self.processor = module.backbone.make_processor(max_image_side=self.sampler.image_size)

    def judge(self, step: int) -> dict[str, Any]:
        backbone = self.module.backbone
        rows, images = {}, {}
        for name, specs in self.sets.items():
            imgs = generate_for(specs, self.module.denoiser, backbone.vae, self.processor, self.sampler, seed=self.seed)
            rows[name] = evaluate_pairs(zip(specs, imgs), cfg=CONCEPT_JUDGE)
            images[name] = imgs
        self._images[str(step)] = images["concept"][:8]
        return {"step": int(step), **headline(rows), "sets": {k: v.as_dict() for k, v in rows.items()}}

    def summary(self) -> Optional[dict[str, Any]]:
        return self.results if self.results["before"] is not None else None

    def config_dict(self) -> dict[str, Any]:
        return {"n": self.n, "every_n_steps": self.every_n_steps, "seed": self.seed}

    def callbacks(self, out_dir: Path) -> list:
        return [WorldJudgeCallback(self, out_dir)]


class WorldJudgeCallback(pl.Callback):
    def __init__(self, ext: WorldJudgeExtension, out_dir: Path) -> None:
        self.ext, self.out_dir = ext, Path(out_dir)

    def _save(self) -> None:
        write_json(self.out_dir / RESULTS, self.ext.results)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        saved = self.out_dir / RESULTS
        # On resume the weights are restored before this hook but global_step only later: ask
        # whether a checkpoint is being resumed, or "before" would judge the resumed weights.
        if (trainer.ckpt_path or trainer.global_step > 0) and saved.is_file():  # keep the run's "before"
            self.ext.results = json.loads(saved.read_text())
            return
        self.ext.results["before"] = self.ext.judge(int(trainer.global_step))
        self._save()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        every = self.ext.every_n_steps
        step = int(trainer.global_step)
        if not (trainer.is_global_zero and every > 0 and step % every == 0 and step < int(trainer.max_steps)):
            return
        if any(h["step"] == step for h in self.ext.results["history"]):
            return  # gradient accumulation: several batches end one step
        self.ext.results["history"].append(self.ext.judge(step))
        self._save()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        after = self.ext.judge(int(trainer.global_step))
        self.ext.results["after"] = after
        self.ext.results["history"] = [h for h in self.ext.results["history"] if h["step"] != after["step"]] + [after]
        self._save()
        before = self.ext.results["before"] or {}
        rank_zero_info("world judge (before -> after): " + ", ".join(
            f"{k} {100 * before.get(k, float('nan')):.1f} -> {100 * after[k]:.1f} %"
            for k in ("acquisition", "fidelity", "editability", "retention")))
        rows = [np.concatenate(imgs, axis=1) for imgs in self.ext._images.values() if imgs]
        if rows:
            with atomic_path(self.out_dir / GRID) as tmp:
                Image.fromarray(np.concatenate([rows[0], rows[-1]], axis=0)).save(tmp, format="PNG")
