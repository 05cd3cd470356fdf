"""``python -m deft_omni.generate``: images from a backbone (OmniGen, Stable Diffusion 1.5 / XL) plus any
number of adapters.

    python -m deft_omni.generate --model PATH|tiny|tiny-sd15|tiny-sdxl [--adapter DIR[:WEIGHT] ...] [--merge]
        (--prompt TEXT [--prompt TEXT ...] [--input-image IMG ...] | --prompts FILE.jsonl|FILE.txt)
        [--height H --width W --steps N --seed S --guidance-scale G --img-guidance-scale 1.6]
        [--negative-prompt TEXT] [--batch-size N] [--num-images-per-prompt N]
        [--dtype fp32|bf16|fp16] [--device cpu|cuda] --out DIR
    python -m deft_omni.generate --from-sidecar DIR/000_a-cat.json --out DIR2 [--model PATH] [--device ...]

Writes ``DIR/<index>_<slug>.png``, a same-name ``.json`` sidecar (every setting, the model and adapter
identities, the resolved seed) and ``DIR/grid.png``.  The model's family is detected from its folder
(the backbone registry); size, steps and guidance default to the family's (OmniGen 1024 px, 50
steps, 2.5; SDXL its native 1024 px and 5.0, SD1.5 512 px and 7.5).  See ``docs/generation.md``
and ``docs/stable_diffusion.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional

from .adapters import AdapterLoadError
from .backbones import NamedModelError, backbone_class, families, is_named_model, resolve_model
from .backbones.sd_family import SDWeightsNotFound
from .core.dtypes import parse_dtype_arg
from .generation.adapters_spec import parse_adapter_arg
from .generation.errors import GenerationError
from .generation.prompts import PromptSpec, prompt_defaults, read_prompts_file
from .generation.regenerate import settings_from_sidecar
from .generation.runner import GenerationSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.generate",
                                description="Generate images with OmniGen or Stable Diffusion and DEFT/PaRa/LoRA "
                                            "adapters.")
    p.add_argument("--model", help="a model folder (OmniGen in diffusers or original layout, Stable Diffusion 1.5 / "
                                   "XL in diffusers layout), or a test model: tiny, tiny-sd15, tiny-sdxl")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR[:WEIGHT]",
                   help="adapter folder with weight (default 1); repeat to add a weighted sum of updates")
    p.add_argument("--merge", action="store_true", help="fold the adapters into the base weights (faster, same images)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                     help="instruction; input image k is referenced as <img><|image_k|></img>; repeatable")
    src.add_argument("--prompts", type=Path, metavar="FILE", help="JSONL (per-line settings) or TXT prompts file")
    src.add_argument("--from-sidecar", type=Path, metavar="FILE.json", help="remake the image this sidecar describes")
    p.add_argument("--input-image", action="append", default=[], type=Path, metavar="IMG",
                   help="input image for --prompt (edit / in-context tasks), in tag order; repeatable")
    p.add_argument("--height", type=int, default=None, help="output height in px, multiple of 16 (default: the "
                   "family's: OmniGen the model's largest side, at most 1024; SDXL 1024; SD1.5 512)")
    p.add_argument("--width", type=int, default=None, help="output width in px, multiple of 16 (default: as height)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 50)")
    p.add_argument("--seed", type=int, default=None, help="base seed: image i uses seed+i (random when omitted)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="text guidance scale (default: OmniGen 2.5, SDXL 5.0, SD1.5 7.5)")
    p.add_argument("--img-guidance-scale", type=float, default=1.6, help="image guidance scale (input images)")
    p.add_argument("--negative-prompt", default=None, help="unconditional prompt (default: OmniGen <cfg>, as "
                                                            "trained; SD the pipeline's own)")
    p.add_argument("--no-img-cfg", action="store_true", help="drop the image-only guidance branch")
    p.add_argument("--batch-size", type=int, default=1, help="images of one size per transformer call")
    p.add_argument("--num-images-per-prompt", type=int, default=1, help="images per prompt (consecutive seeds)")
    p.add_argument("--max-input-image-side", type=int, default=None,
                   help="input images are fitted to this side (default: the model's largest, at most 1024)")
    p.add_argument("--dtype", type=parse_dtype_arg, default="float32",
                   help="transformer dtype: fp32, bf16, fp16 or their long names (the VAE stays fp32)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def settings_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser,
                       defaults: Optional[dict] = None) -> GenerationSettings:
    """``defaults``: the backbone's generation defaults (size, guidance, steps) for unset options."""
    if not args.model:
        parser.error("--model is required (a model folder, or tiny / tiny-sd15 / tiny-sdxl)")
    family = defaults or {"height": 1024, "width": 1024, "guidance_scale": 2.5, "steps": 50}
    height = args.height if args.height is not None else family["height"]
    width = args.width if args.width is not None else family["width"]
    guidance = args.guidance_scale if args.guidance_scale is not None else family["guidance_scale"]
    defaults = prompt_defaults(height, width, guidance, args.img_guidance_scale, args.negative_prompt)
    if args.prompts is not None:
        if args.input_image:
            parser.error("--input-image goes with --prompt; in a prompts file give each line's input_images")
        prompts = read_prompts_file(args.prompts, defaults)
    elif args.prompt:
        prompts = [PromptSpec(instruction=text, input_images=list(args.input_image), source=f"--prompt {text!r}",
                              **defaults) for text in args.prompt]
    else:
        parser.error("give --prompt TEXT, --prompts FILE or --from-sidecar FILE.json")
    return GenerationSettings(
        model=args.model, prompts=prompts, out=args.out, adapters=[parse_adapter_arg(a) for a in args.adapter],
        merge=args.merge, steps=args.steps if args.steps is not None else family["steps"], seed=args.seed,
        batch_size=args.batch_size, num_images_per_prompt=args.num_images_per_prompt, dtype=args.dtype,
        device=args.device or "cpu", use_img_cfg=not args.no_img_cfg, max_input_image_side=args.max_input_image_side,
        grid=not args.no_grid, progress=not args.no_progress)


def _backbone(model: Optional[str], family: Optional[str] = None):
    """(backbone class, folder) of ``--model``: named models (tiny, tiny-sdxl, world) resolved once,
    through the backbone registry, which also detects a folder's family."""
    try:
        return resolve_model(model, family)
    except FileNotFoundError as err:
        raise GenerationError(f"--model {model}: {err}; give a model folder or a test model (tiny, tiny-sd15, "
                              "tiny-sdxl)") from None


def _resolved(settings: GenerationSettings, cls) -> GenerationSettings:
    """Named models become their folders here, once."""
    if is_named_model(settings.model, cls.family):
        settings.model_path = resolve_model(settings.model, cls.family)[1]
    return settings


def _image_limit(cls, folder: Path) -> Optional[int]:
    """The largest image side the model takes (from its config files), None if unreadable here
    (a missing file is reported by the loader, with the files it lacks)."""
    try:
        return cls.max_image_side(str(folder))
    except (OSError, ValueError, KeyError):
        return None


def check_sizes(settings: GenerationSettings, limit: Optional[int]) -> None:
    """Every image side against the model, before it loads: one line naming the setting to lower."""
    if not limit:
        return
    why = f"--model {settings.model} takes images of at most {limit} px a side"
    if settings.max_input_image_side > limit:
        raise GenerationError(f"--max-input-image-side {settings.max_input_image_side}: {why}; lower it")
    for spec in settings.prompts:
        if max(spec.height, spec.width) > limit:
            raise GenerationError(f"{spec.source}: {spec.height}x{spec.width} px output: {why}; lower --height/"
                                  f"--width (or that line's height/width)")


def main(argv: Optional[list[str]] = None) -> list[Path]:
    """Run the command; returns the written PNG paths.  Bad input exits with status 2 and one message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out DIR is required")
    command = ["python", "-m", "deft_omni.generate", *(sys.argv[1:] if argv is None else argv)]
    try:
        if args.from_sidecar is not None:
            if args.adapter or args.input_image or args.merge:
                parser.error("--from-sidecar takes its adapters, inputs and settings from the sidecar; "
                             "only --out, --model and --device may be given with it")
            settings, job = settings_from_sidecar(args.from_sidecar, args.out, args.model, args.device,
                                                  progress=not args.no_progress)
            recorded = (settings.expected_model or {}).get("family")
            cls, _ = _backbone(settings.model, recorded if recorded in families() else None)
            paths = cls.run_generation(_resolved(settings, cls), [job], argv=command)
            print(f"wrote {paths[0]}")
            return paths
        cls, folder = _backbone(args.model) if args.model else (backbone_class("omnigen"), None)
        known = folder is not None and folder.is_dir()
        limit = _image_limit(cls, folder) if known else None
        if args.max_input_image_side is None:
            args.max_input_image_side = min(1024, limit) if limit else 1024
        settings = settings_from_args(args, parser, cls.generation_defaults(str(folder)) if known else None)
        check_sizes(settings, limit)
        paths = cls.run_generation(_resolved(settings, cls), argv=command)
    except (GenerationError, AdapterLoadError, NamedModelError, SDWeightsNotFound) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {len(paths)} image(s) to {settings.out}" + (" (+ grid.png)" if settings.grid else ""))
    print("regenerate one with: python -m deft_omni.generate --from-sidecar "
          f"{shlex.quote(str(paths[0].with_suffix('.json')))} --out DIR")
    return paths


if __name__ == "__main__":
    main()
