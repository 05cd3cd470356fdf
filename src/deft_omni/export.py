"""``python -m deft_omni.export``: any adapter folder as a plain peft LoRA, for other runtimes.

    python -m deft_omni.export ADAPTER_DIR --model PATH|tiny|tiny-sdxl --out DIR
        [--layout diffusers|original|pipeline] [--scale S] [--no-check-base]

``--layout diffusers`` (default): LoRA on diffusers' module names (``layers.N.self_attn.to_q`` ...), for
deft_omni, peft on ``OmniGenTransformer2DModel`` and ``deft_omni.load_into_pipeline``.
``--layout original``: LoRA on OmniGen's own names (``llm.layers.N.self_attn.qkv_proj`` ...), for
``OmniGenPipeline.merge_lora`` of OmniGen's package.  ``--layout pipeline`` (the default for Stable
Diffusion folders): the diffusers-layout folder plus ``pytorch_lora_weights.safetensors``, which
``StableDiffusion(XL)Pipeline.load_lora_weights(DIR)`` loads.  DEFT/PaRa updates read W0, so the base
model is needed and the export is valid on that base only.  See ``docs/interop.md`` and
``docs/stable_diffusion.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from .backbones import resolve_model
from .adapters import AdapterLoadError, load_adapter, read_adapter_config
from .adapters.io import PEFT_CONFIG_NAME
from .interop import LAYOUTS, ExportError, export_lora, is_original_layout

ADAPTER_NAME = "exported"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deft_omni.export", description=__doc__.split("\n\n")[0])
    p.add_argument("adapter_dir", type=Path, help="adapter folder (save_adapter, a run's adapters/final, peft)")
    p.add_argument("--model", required=True, help="the base model folder the adapter was trained on (OmniGen, SD1.5, "
                                                  "SDXL), or a named model: tiny, world, tiny-sd15, tiny-sdxl")
    p.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it exists)")
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="module names: diffusers' (to_q/to_k/to_v ...), OmniGen's original (qkv_proj ...), or "
                        "diffusers' pipeline LoRA file (SD); default: diffusers for OmniGen, pipeline for SD")
    p.add_argument("--scale", type=float, default=1.0, help="strength baked into the LoRA: dW -> scale * dW")
    p.add_argument("--no-check-base", action="store_true", help="skip the adapter's base-fingerprint check")
    return p


def run(args: argparse.Namespace) -> Path:
    """Load the base network and the adapter, write the export; returns the folder."""
    import torch

    read_adapter_config(args.adapter_dir)  # a bad folder fails before the model loads
    if is_original_layout(args.adapter_dir):
        raise ExportError(f"{args.adapter_dir} is a LoRA on OmniGen's original module names already: OmniGen's "
                          f"merge_lora loads it as is, and deft_omni.load_into_pipeline(pipe, DIR) converts it")
    try:
        cls, model_path = resolve_model(args.model)
    except FileNotFoundError:  # no such folder: OmniGen's loader names what it looked for
        cls, model_path = resolve_model(args.model, "omnigen")
    layout = args.layout or cls.default_export_layout
    # fp32: DEFT's factor s R - right^T W0 is formed at full precision
    network = cls.load(str(model_path), torch_dtype=torch.float32).denoiser
    load_adapter(network, args.adapter_dir, adapter_name=ADAPTER_NAME, check_base=not args.no_check_base)
    args.layout = layout
    return export_lora(network, args.out, ADAPTER_NAME, args.scale, layout)


def main(argv: Optional[list[str]] = None) -> Path:
    """Run the command; bad input exits with status 2 and one message naming what to fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scale != args.scale:
        parser.error("--scale is NaN; give a number")
    try:
        out = run(args)
    except (AdapterLoadError, ExportError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    config = json.loads((out / PEFT_CONFIG_NAME).read_text())
    ranks = sorted({config["r"], *config.get("rank_pattern", {}).values()})
    print(f"wrote {out}: peft LoRA on {len(config['target_modules'])} {args.layout}-layout modules, "
          f"rank {'/'.join(map(str, ranks))}, strength {args.scale}")
    return out


if __name__ == "__main__":
    main()
