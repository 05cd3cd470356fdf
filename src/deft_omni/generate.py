"""``python -m deft_omni.generate``: images from OmniGen plus any number of adapters.

    python -m deft_omni.generate --model PATH|tiny [--adapter DIR[:WEIGHT] ...] [--merge]
        (--prompt TEXT [--prompt TEXT ...] [--input-image IMG ...] | --prompts FILE.jsonl|FILE.txt)
        [--height 1024 --width 1024 --steps 50 --seed S --guidance-scale 2.5 --img-guidance-scale 1.6]
        [--negative-prompt TEXT] [--batch-size N] [--num-images-per-prompt N]
        [--dtype fp32|bf16|fp16] [--device cpu|cuda] --out DIR
    python -m deft_omni.generate --from-sidecar DIR/000_a-cat.json --out DIR2 [--model PATH] [--device ...]

Writes ``DIR/<index>_<slug>.png``, a same-name ``.json`` sidecar (every setting, the model and adapter
identities, the resolved seed) and ``DIR/grid.png``.  See ``docs/generation.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional

from .adapters import AdapterLoadError
from .backbones import NamedModelError, is_named_model, resolve_model
from .core.dtypes import parse_dtype_arg
from .generation.adapters_spec import parse_adapter_arg
from .generation.errors import GenerationError
from .generation.prompts import PromptSpec, prompt_defaults, read_prompts_file
from .generation.regenerate import settings_from_sidecar
from .generation.runner import GenerationSettings, run_generation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.generate",
                                description="Generate images with OmniGen and DEFT/PaRa/LoRA adapters.")
    p.add_argument("--model", help="OmniGen folder (diffusers or original layout), or 'tiny' for the test model")
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
    p.add_argument("--height", type=int, default=None,
                   help="output height in px, multiple of 16 (default: the model's largest side, at most 1024)")
    p.add_argument("--width", type=int, default=None,
                   help="output width in px, multiple of 16 (default: the model's largest side, at most 1024)")
    p.add_argument("--steps", type=int, default=50, help="Euler steps")
    p.add_argument("--seed", type=int, default=None, help="base seed: image i uses seed+i (random when omitted)")
    p.add_argument("--guidance-scale", type=float, default=2.5, help="text guidance scale")
    p.add_argument("--img-guidance-scale", type=float, default=1.6, help="image guidance scale (input images)")
    p.add_argument("--negative-prompt", default=None, help="unconditional prompt (default: <cfg>, as trained)")
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


def settings_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> GenerationSettings:
    if not args.model:
        parser.error("--model is required (an OmniGen folder, or 'tiny')")
    defaults = prompt_defaults(args.height, args.width, args.guidance_scale, args.img_guidance_scale,
                               args.negative_prompt)
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
        merge=args.merge, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
        num_images_per_prompt=args.num_images_per_prompt, dtype=args.dtype, device=args.device or "cpu",
        use_img_cfg=not args.no_img_cfg, max_input_image_side=args.max_input_image_side,
        grid=not args.no_grid, progress=not args.no_progress)


def _resolved(settings: GenerationSettings) -> GenerationSettings:
    """Named models (tiny, world) become their folders here, once, through the backbone registry."""
    if is_named_model(settings.model, "omnigen"):
        settings.model_path = resolve_model(settings.model, "omnigen")[1]
    return settings


def image_limit(model: str) -> Optional[int]:
    """The largest image side the model takes (from its config files), None if unreadable here
    (a missing folder is reported by the loader, with the files it lacks)."""
    try:
        cls, folder = resolve_model(model, "omnigen")
        return cls.max_image_side(str(folder))
    except (OSError, ValueError, KeyError):
        return None


def fill_sizes(args: argparse.Namespace, limit: Optional[int]) -> None:
    """Unset sizes become the model's largest side, at most 1024 px."""
    default = min(1024, limit) if limit else 1024
    for name in ("height", "width", "max_input_image_side"):
        if getattr(args, name) is None:
            setattr(args, name, default)


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
            paths = run_generation(_resolved(settings), [job], argv=command)
            print(f"wrote {paths[0]}")
            return paths
        limit = image_limit(args.model) if args.model else None
        fill_sizes(args, limit)
        settings = settings_from_args(args, parser)
        check_sizes(settings, limit)
        paths = run_generation(_resolved(settings), argv=command)
    except (GenerationError, AdapterLoadError, NamedModelError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {len(paths)} image(s) to {settings.out}" + (" (+ grid.png)" if settings.grid else ""))
    print("regenerate one with: python -m deft_omni.generate --from-sidecar "
          f"{shlex.quote(str(paths[0].with_suffix('.json')))} --out DIR")
    return paths


if __name__ == "__main__":
    main()
