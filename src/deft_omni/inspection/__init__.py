"""Adapter inspection: rank-r algebra of dW = B A against W0, tables and plots (CLI: deft_omni.inspect)."""

from .collect import collect_stats, find_unit, joint_weight, split_layer
from .displacement import Displacement, displacement_field
from .subspace import (
    SubspaceConfig,
    UnitStats,
    UpdateSpectrum,
    column_basis,
    effective_rank,
    energy_rank,
    gram_fro_norm,
    principal_angles,
    top_left_subspace,
    unit_stats,
    update_spectrum,
)

__all__ = [
    "Displacement", "SubspaceConfig", "UnitStats", "UpdateSpectrum", "collect_stats", "column_basis",
    "displacement_field", "effective_rank", "energy_rank", "find_unit", "gram_fro_norm", "joint_weight",
    "principal_angles", "split_layer", "top_left_subspace", "unit_stats", "update_spectrum",
]
