"""The GPU peak-memory and step-cost model of full-size OmniGen training.

The peak is a sum of terms, each marked ``measured`` (fitted on this machine's CPU runs of 1-2
full-width layers), ``traced`` (a fake-tensor trace) or ``computed`` (exact arithmetic from
parameter counts, dtypes and shapes).  Terms belong to phases that never coexist on the device:

* static (always there): base weights, VAE weights, adapter parameters + gradients + AdamW
  states, the batch on the device (pixels, the (B, S, S) fp32 0/1 mask);
* step: the additive attention mask, activations x 32 layers, the step overhead (activations
  outside the blocks, the last block's backward transient, the block recomputed under
  checkpointing), GPU-only attention buffers;
* vae: SDXL's VAE encoding the batch in fp32 without grad (nothing with cached latents);
* optimizer: AdamW's foreach temporaries (one copy of the trained parameters).

peak = static + max(step, vae, optimizer).  What ``torch.cuda.max_memory_allocated`` reports;
``nvidia-smi`` adds the CUDA context (~0.5-1 GiB) and the caching allocator's reserve.

Step cost on a GPU: matmul FLOPs (:func:`~.arch.step_flops`) at an assumed utilisation of the
card's dense bf16 (transformer) and TF32 (fp32 VAE convolutions) peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from .arch import OMNIGEN_V1, adapter_parameters, buffer_elements, parameter_counts, sequence_length, step_flops
from .fit import Quadratic

GIB = 2 ** 30
# Dense peak TFLOP/s (no sparsity): bf16 tensor cores, and TF32 for the fp32 VAE's convolutions.
GPUS = {"A100": {"bf16": 312e12, "tf32": 156e12}, "H100": {"bf16": 989e12, "tf32": 495e12}}
UTILISATION = 0.40  # assumed fraction of that peak a 3.8B transformer step sustains (bf16, batch 1-2)
BYTES = {"bf16": 2, "fp32": 4, "int8": 1}


@dataclass(frozen=True)
class Setup:
    """One training configuration on one GPU (the full 32-layer model)."""

    side: int = 1024
    batch: int = 2
    rank: int = 64
    impl: str = "ours"          # ours | peft
    method: str = "deft"        # deft | lora | para
    basis: str = "qr"
    ckpt: bool = True
    inputs: int = 0             # input images per sample (same side as the output)
    base: str = "bf16"          # bf16 | int8 (weight-only, every nn.Linear; per-row bf16 scales)
    latents: str = "pixels"     # pixels (VAE encodes on the device each step) | cached
    attention: str = "mem_efficient"  # mem_efficient (SDPA's kernel with a mask) | math (scores kept)
    adapter_dtype: str = "fp32"  # fp32 masters; bf16 as OmniGen's own train.py casts its LoRA
    trained: str = "adapter"    # adapter | full (every weight, AdamW states in the base dtype)
    text_tokens: int = 63
    layers: int = 32

    @property
    def seq(self) -> int:
        return sequence_length(self.text_tokens, self.side, self.inputs)

    @property
    def method_key(self) -> str:
        basis = self.basis if self.method in ("deft", "para") else "-"
        return f"{self.impl}-{self.method}-{basis}"


@dataclass
class Term:
    name: str
    bytes: float
    source: str   # measured | traced | computed
    phase: str    # static | step | vae | optimizer
    note: str = ""


@dataclass
class Coefficients:
    """What the CPU runs measured (bytes, c + B (a S + b S^2)): see :mod:`.matrix` for how."""

    layer: Quadratic                 # activations one block keeps (reference method, no ckpt)
    overhead: Quadratic              # step peak beyond static + blocks - additive mask (no ckpt)
    ckpt_overhead: Quadratic         # the same with checkpointing, beyond the ckpt inputs
    layer_delta: dict[str, float] = field(default_factory=dict)     # method key -> bytes per token
    overhead_delta: dict[str, float] = field(default_factory=dict)  # method key -> bytes per token
    reference: str = "ours-deft-qr"
    vae_bytes_per_pixel: float = 0.0   # traced SDXL VAE encode transient per input pixel (fp32)
    vae_flops_per_pixel: float = 0.0
    source: str = "measured"

    def delta(self, kind: str, method_key: str, rank: int) -> float:
        """Bytes per token a method adds over the reference (measured at the nearest rank; 0 if
        the method was not measured)."""
        table = self.layer_delta if kind == "layer" else self.overhead_delta
        options = [(abs(int(k.split("@r")[1]) - rank), k) for k in table if k.split("@r")[0] == method_key]
        return table[min(options)[1]] if options else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("layer", "overhead", "ckpt_overhead"):
            out[key] = getattr(self, key).to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Coefficients":
        data = dict(data)
        for key in ("layer", "overhead", "ckpt_overhead"):
            data[key] = Quadratic.from_dict(data[key])
        return cls(**data)


@dataclass
class Prediction:
    setup: Setup
    terms: list[Term]
    phases: dict[str, float]
    peak: float
    flops: float
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"setup": asdict(self.setup), "seq": self.setup.seq, "terms": [asdict(t) for t in self.terms],
                "phases": self.phases, "peak": self.peak, "peak_gib": self.peak / GIB, "flops": self.flops,
                "seconds": self.seconds}

    def binding(self) -> str:
        """The phase that sets the peak and its largest term, then the largest static term."""
        phase = max(self.phases, key=self.phases.get)
        top = max((t for t in self.terms if t.phase == phase), key=lambda t: t.bytes)
        static = max((t for t in self.terms if t.phase == "static"), key=lambda t: t.bytes)
        return f"{phase} phase: {top.name} ({top.bytes / GIB:.2f} GiB) on {static.name} ({static.bytes / GIB:.2f} GiB)"


def weight_terms(setup: Setup, cfg: dict = OMNIGEN_V1) -> list[Term]:
    counts = parameter_counts(cfg)
    total, linear = counts["total"], counts["layer_linear_weights"]
    other_linear = cfg["hidden_size"] * (2 * 256 + 2 * cfg["hidden_size"] + 2 * cfg["hidden_size"]) + \
        cfg["hidden_size"] * 16  # time embeddings, norm_out, proj_out weights
    buffers = buffer_elements(cfg) * 2
    if setup.base == "int8":
        quantised = linear + other_linear
        rows = cfg["num_layers"] * (3 * cfg["hidden_size"] + cfg["hidden_size"] + 2 * cfg["intermediate_size"]
                                    + cfg["hidden_size"])
        base = quantised + 2 * rows + 2 * (total - quantised) + buffers
        note = "every nn.Linear weight in int8 + per-row bf16 scales; embeddings, convs, norms bf16"
    else:
        base = BYTES[setup.base] * total + buffers
        note = f"{total:,} parameters x {BYTES[setup.base]} B + the position table"
    terms = [Term("base weights", base, "computed", "static", note)]
    if setup.latents == "pixels":
        terms.append(Term("VAE weights (fp32)", 83_653_863 * 4, "computed", "static", "SDXL VAE, 83,653,863 params"))
    return terms


def trained_terms(setup: Setup, cfg: dict = OMNIGEN_V1) -> list[Term]:
    if setup.trained == "full":
        n, b = parameter_counts(cfg)["total"], BYTES[setup.base if setup.base != "int8" else "bf16"]
        return [Term("gradients (all weights)", n * b, "computed", "static", f"{n:,} x {b} B"),
                Term("AdamW states (all weights)", 2 * n * b, "computed", "static", "exp_avg + exp_avg_sq")]
    n = adapter_parameters(cfg, setup.impl, setup.method, setup.rank)
    b = BYTES[setup.adapter_dtype]
    return [Term("adapter params + grads + AdamW", 4 * n * b, "computed", "static",
                 f"{n:,} params x (1 + 1 + 2) x {b} B")]


def batch_terms(setup: Setup) -> list[Term]:
    b, s = setup.batch, setup.seq
    pixels = 4 * 3 * setup.side ** 2 * (b + b * setup.inputs)
    return [Term("batch: pixels + ids", pixels + 16 * b * s, "computed", "static", "fp32 pixels, int64 ids/positions"),
            Term("batch: (B,S,S) 0/1 mask, fp32", 4 * b * s * s, "computed", "static", f"S = {s}")]


def step_terms(setup: Setup, co: Coefficients, cfg: dict = OMNIGEN_V1) -> list[Term]:
    b, s, h, n = setup.batch, setup.seq, cfg["hidden_size"], setup.layers
    key = setup.method_key
    per_layer = co.layer(s, b) + b * s * co.delta("layer", key, setup.rank)
    overhead = co.overhead(s, b) + b * s * co.delta("overhead", key, setup.rank)
    mask = 2 * b * s * s
    terms = [Term("attention: additive mask (B,1,S,S), bf16", mask, "computed", "step", "built once, shared by every block")]
    if setup.ckpt:
        terms.append(Term(f"checkpointed block inputs x {n}", n * 2 * b * s * h, "computed", "step", "B x S x hidden bf16"))
        terms.append(Term("recomputed block (activations)", per_layer, "measured", "step", "one block alive in backward"))
        terms.append(Term("step overhead (checkpointing)", co.ckpt_overhead(s, b) + overhead - co.overhead(s, b),
                          "measured", "step", "outside the blocks + backward transient"))
    else:
        terms.append(Term(f"activations x {n} blocks", n * per_layer, "measured", "step",
                          f"{per_layer / 2**20:.1f} MiB per block"))
        terms.append(Term("step overhead", overhead, "measured", "step", "outside the blocks + backward transient"))
    if setup.attention == "mem_efficient" and s % 8:
        padded = 2 * b * s * (s + 8 - s % 8)
        copies = 1 if setup.ckpt else n
        terms.append(Term(f"attention: padded mask copies x {copies} (GPU)", copies * padded, "computed", "step",
                          "SDPA's memory-efficient kernel pads a mask whose rows are not 8-aligned; "
                          "pad the sequence to a multiple of 8 to remove it"))
    if setup.attention == "math":
        heads = cfg["num_attention_heads"]
        probs = 2 * b * heads * s * s
        terms.append(Term("attention: math kernel scores", (1 if setup.ckpt else n) * probs + 2 * probs, "computed",
                          "step", "softmax kept per block + one block's scores in flight"))
    if setup.base == "int8":
        terms.append(Term("dequantised weight in flight", 2 * 2 * cfg["intermediate_size"] * h, "computed", "step",
                          "the largest Linear (gate_up) dequantised to bf16 for one matmul"))
    return terms


def vae_terms(setup: Setup, co: Coefficients) -> list[Term]:
    if setup.latents != "pixels":
        return [Term("VAE encode (cached latents: none)", 0.0, "computed", "vae")]
    images = max(setup.batch, 1)  # the outputs in one call; input images are encoded one by one
    return [Term("VAE encode transient (fp32)", co.vae_bytes_per_pixel * images * setup.side ** 2, "traced", "vae",
                 f"SDXL VAE on {images} x {setup.side}^2 px, no grad")]


def optimizer_terms(setup: Setup, cfg: dict = OMNIGEN_V1) -> list[Term]:
    if setup.trained == "full":
        n, b = parameter_counts(cfg)["total"], BYTES[setup.base if setup.base != "int8" else "bf16"]
        return [Term("AdamW foreach temporaries", n * b, "computed", "optimizer", "one parameter-sized buffer")]
    n = adapter_parameters(cfg, setup.impl, setup.method, setup.rank)
    return [Term("AdamW foreach temporaries", n * BYTES[setup.adapter_dtype], "computed", "optimizer")]


def predict(setup: Setup, co: Coefficients, gpus: Optional[dict] = None, utilisation: float = UTILISATION,
            cfg: dict = OMNIGEN_V1) -> Prediction:
    terms = [*weight_terms(setup, cfg), *trained_terms(setup, cfg), *batch_terms(setup),
             *step_terms(setup, co, cfg), *vae_terms(setup, co), *optimizer_terms(setup, cfg)]
    static = sum(t.bytes for t in terms if t.phase == "static")
    phases = {p: static + sum(t.bytes for t in terms if t.phase == p) for p in ("step", "vae", "optimizer")}
    flops = step_flops(cfg, setup.batch, setup.seq, setup.rank, setup.ckpt, setup.layers, setup.trained)["total"]
    vae_flops = co.vae_flops_per_pixel * setup.side ** 2 * setup.batch * (1 + setup.inputs) \
        if setup.latents == "pixels" else 0.0
    seconds = {name: flops / (spec["bf16"] * utilisation) + vae_flops / (spec["tf32"] * utilisation)
               for name, spec in (gpus or GPUS).items()}
    return Prediction(setup, terms, phases, max(phases.values()), flops + vae_flops, seconds)


def with_(setup: Setup, **changes: Any) -> Setup:
    return replace(setup, **changes)
