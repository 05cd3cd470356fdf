"""Least-squares fits of memory against sequence length: bytes per sample = a*S + b*S^2."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Quadratic:
    """y = a*S + b*S^2 (+ c when fitted with an intercept), per sample."""

    a: float
    b: float
    c: float = 0.0
    max_rel_residual: float = 0.0
    points: int = 0

    def __call__(self, seq: float) -> float:
        return self.c + self.a * seq + self.b * seq * seq

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Quadratic":
        return cls(**data)


def fit_quadratic(seq: Sequence[float], values: Sequence[float], intercept: bool = False) -> Quadratic:
    """Fit ``values`` (bytes per sample) at sequence lengths ``seq``.

    Too few distinct S for every term drops b (then c); a fit never invents a negative b:
    where the free b comes out < 0 the data are linear within noise and b = 0 is refit.
    Columns are scaled before solving (S^2 is ~1e7 times S)."""
    s = np.asarray(seq, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"need matching, non-empty seq and values, got {s.shape} and {y.shape}")
    distinct = np.unique(s).size
    terms = ["a"] + (["c"] if intercept and distinct >= 2 else [])
    if distinct > len(terms):
        terms.insert(1, "b")
    coef = _solve(s, y, terms)
    if coef.get("b", 0.0) < 0:
        terms.remove("b")
        coef = _solve(s, y, terms)
    model = Quadratic(coef["a"], coef.get("b", 0.0), coef.get("c", 0.0))
    pred = np.array([model(v) for v in s])
    rel = np.abs(pred - y) / np.maximum(np.abs(y), 1.0)
    return Quadratic(model.a, model.b, model.c, float(rel.max()), int(s.size))


def _solve(s: np.ndarray, y: np.ndarray, terms: list[str]) -> dict[str, float]:
    column = {"a": s, "b": s * s, "c": np.ones_like(s)}
    X = np.stack([column[t] for t in terms], axis=1)
    scale = np.maximum(np.abs(X).max(axis=0), 1e-30)
    coef, *_ = np.linalg.lstsq(X / scale, y, rcond=None)
    return {t: float(v) for t, v in zip(terms, coef / scale)}
