"""DEFT, PaRa and LoRA adapters for nn.Linear layers (deft_omni's own implementation)."""

from .bases import compute_basis, fix_signs
from .branches import Branch, DeftBranch, LoraBranch
from .config import DECOMPOSITIONS, METHODS, AdapterConfig
from .errors import AdapterLoadError, QuantizedMergeError
from .export import export_lora
from .inject import InjectionReport, inject_adapter, select_targets
from .io import load_adapter, read_adapter_config, save_adapter, stage_adapter
from .layer import AdapterLinear
from .model_ops import (
    adapter_branches,
    adapter_configs,
    adapter_layers,
    adapter_parameter_ids,
    adapter_parameters,
    base_parameters,
    count_parameters,
    delete_adapter,
    merge_adapters,
    param_groups,
    set_active_adapters,
    set_adapter_scale,
    unmerge_adapters,
)

__all__ = [
    "AdapterConfig", "AdapterLinear", "Branch", "DeftBranch", "LoraBranch", "InjectionReport",
    "DECOMPOSITIONS", "METHODS", "compute_basis", "fix_signs", "inject_adapter", "select_targets",
    "adapter_branches", "adapter_configs", "adapter_layers", "adapter_parameters", "count_parameters",
    "adapter_parameter_ids", "base_parameters",
    "merge_adapters", "unmerge_adapters", "param_groups", "set_active_adapters", "set_adapter_scale",
    "AdapterLoadError", "QuantizedMergeError", "load_adapter", "read_adapter_config", "save_adapter", "stage_adapter",
    "delete_adapter", "export_lora",
]
