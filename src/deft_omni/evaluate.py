"""Evaluate generated images with the DEFT paper's metrics.

Subject-driven generation (DreamBooth / DreamBench++: CLIP-I, CLIP-T, DINO, DINOv2,
sharpness, aesthetic)::

    python -m deft_omni.evaluate --generated gen/ --references data/dreambooth/train/eval_prompts.json \\
        --clip CLIP_DIR --dino DINO_DIR --dinov2 DINOV2_DIR --aesthetic-head sac+logos+ava1-l14-linearMSE.pth \\
        --strip-token sks --out eval/

Conditional generation (VisualCloze: SSIM, canny F1, depth RMSE)::

    python -m deft_omni.evaluate --generated gen_canny/ --targets vc/test/target --conditions sidecar \\
        --condition-type canny --key-pattern '^(\\d+)' --out eval_canny/

``--demo OUT`` builds tiny random metric models and a synthetic set and runs everything
(a smoke test of the installation; the numbers mean nothing). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Sequence

from deft_omni.evaluation.aesthetic import AestheticHeadError
from deft_omni.evaluation.config import CONDITION_TYPES, METRICS, EvalConfig
from deft_omni.evaluation.depth import ALIGNMENTS
from deft_omni.evaluation.images import EvaluationInputError
from deft_omni.evaluation.models import MetricModelError
from deft_omni.evaluation.runner import run_evaluation
from deft_omni.evaluation.tables import aggregate, markdown_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("inputs and output")
    io.add_argument("--generated", help="folder of generated images + .json sidecars (also one sub-folder deep)")
    io.add_argument("--out", required=True, help="folder for per_image.csv, per_subject.csv, summary.md, "
                                                 "metrics.json (with --demo: the demo's folder)")
    io.add_argument("--references", help="eval_prompts.json of data_prep.dreambooth, or a folder with one "
                                         "sub-folder (or <subject>.<ext> file) per subject")
    io.add_argument("--subjects", help="eval_prompts.json mapping prompts to subjects (default: --references "
                                       "when that is a JSON file)")
    io.add_argument("--reference-root", help="folder eval_prompts.json's image paths are relative to "
                                             "(default: its 'root')")
    io.add_argument("--targets", help="folder of target images, matched by key (SSIM; CLIP-I/DINO without "
                                      "--references)")
    io.add_argument("--conditions", help="folder of condition images matched by key, or 'sidecar' "
                                         "(input_images[--condition-index])")
    io.add_argument("--condition-type", choices=CONDITION_TYPES, help="what the conditions are")
    io.add_argument("--condition-index", type=int, default=0, help="with --conditions sidecar")
    io.add_argument("--key-pattern", help="regex on file stems; its first group (or whole match) is the match key")
    mod = p.add_argument_group("metric models (local folders, or hub ids when online)")
    mod.add_argument("--clip", help="CLIPModel folder (CLIP-I, CLIP-T), e.g. openai/clip-vit-large-patch14")
    mod.add_argument("--dino", help="DINOv1 ViTModel folder, e.g. facebook/dino-vits16")
    mod.add_argument("--dinov2", help="Dinov2Model folder, e.g. facebook/dinov2-base")
    mod.add_argument("--aesthetic-head", help="LAION aesthetic head (.pth or .safetensors; linear or MLP)")
    mod.add_argument("--aesthetic-clip", help="CLIP for the aesthetic head (default: --clip); ViT-L/14 for LAION's")
    mod.add_argument("--depth-model", help="depth estimator folder, e.g. depth-anything/Depth-Anything-V2-Small-hf")
    opt = p.add_argument_group("options")
    opt.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default: all whose "
                                       "inputs and models are given)")
    opt.add_argument("--strip-token", help="word removed from prompts before CLIP-T (e.g. the unique token sks)")
    opt.add_argument("--batch-size", type=int, default=16)
    opt.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    opt.add_argument("--canny-low", type=float, default=100.0, help="cv2.Canny lower threshold")
    opt.add_argument("--canny-high", type=float, default=200.0, help="cv2.Canny upper threshold")
    opt.add_argument("--edge-tolerance", type=int, default=0, help="canny F1 match radius in pixels (0: exact)")
    opt.add_argument("--depth-align", choices=ALIGNMENTS, default="minmax",
                     help="how prediction and condition are put on one scale")
    opt.add_argument("--depth-invert", action="store_true", help="the depth conditions are far = bright")
    opt.add_argument("--no-progress", action="store_true", help="no progress bars")
    opt.add_argument("--world", action="store_true",
                     help="the world judge (shapes world images: adherence per attribute, shape IoU) instead of "
                          "the metric models; each image's sidecar instruction says what it should show")
    opt.add_argument("--demo", action="store_true", help="tiny random models + a synthetic set in --out (smoke test)")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    if not args.generated:
        raise EvaluationInputError("--generated is required (the folder deft_omni.generate wrote)")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else None
    return EvalConfig(
        generated=args.generated, out=args.out, references=args.references, subjects=args.subjects,
        reference_root=args.reference_root, targets=args.targets, conditions=args.conditions,
        condition_type=args.condition_type, condition_index=args.condition_index, key_pattern=args.key_pattern,
        clip=args.clip, dino=args.dino, dinov2=args.dinov2, aesthetic_head=args.aesthetic_head,
        aesthetic_clip=args.aesthetic_clip, depth_model=args.depth_model, metrics=metrics,
        strip_token=args.strip_token, batch_size=args.batch_size, device=args.device, canny_low=args.canny_low,
        canny_high=args.canny_high, edge_tolerance=args.edge_tolerance, depth_align=args.depth_align,
        depth_invert=args.depth_invert, progress=not args.no_progress)


def _demo_configs(out: str, progress: bool) -> list[EvalConfig]:
    from deft_omni.evaluation.demo import write_demo_set
    from deft_omni.evaluation.tiny import build_tiny_metric_models

    models = build_tiny_metric_models(os.path.join(out, "tiny_models"))
    data = write_demo_set(os.path.join(out, "data"))
    common = {"clip": models["clip"], "progress": progress, "batch_size": 4}
    return [
        EvalConfig(generated=data["subjects_generated"], out=os.path.join(out, "subjects"),
                   references=data["references"], dino=models["dino"], dinov2=models["dinov2"],
                   aesthetic_head=models["aesthetic_head"], strip_token="sks", **common),
        EvalConfig(generated=data["canny_generated"], out=os.path.join(out, "canny"), targets=data["targets"],
                   conditions=data["canny_conditions"], condition_type="canny", **common),
        EvalConfig(generated=data["depth_generated"], out=os.path.join(out, "depth"), targets=data["targets"],
                   conditions=data["depth_conditions"], condition_type="depth", depth_model=models["depth"],
                   **common),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.world:
        return _world(args)
    try:
        configs = _demo_configs(args.out, not args.no_progress) if args.demo else [config_from_args(args)]
        for cfg in configs:
            result = run_evaluation(cfg)
            print(f"{cfg.generated}: {len(result['rows'])} images -> {cfg.out}")
            print(markdown_table(aggregate(result["rows"], result["columns"]), result["columns"]))
    except (EvaluationInputError, MetricModelError, AestheticHeadError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    return 0


def _world(args) -> int:
    from deft_omni.world.folder_scores import WorldFolderError, score_folder

    if not args.generated:
        print("error: --world needs --generated FOLDER (python -m deft_omni.generate --out)", file=sys.stderr)
        return 2
    try:
        result = score_folder(Path(args.generated), Path(args.out))
    except WorldFolderError as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(result["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
