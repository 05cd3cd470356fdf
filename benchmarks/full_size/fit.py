"""Least-squares fits of memory against sequence length and batch: c + B (a S + b S^2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Quadratic:
    """bytes = c + batch * (a*S + b*S^2): ``c`` is what a block or step holds whatever the batch
    and length (adapter factors, their casts), the rest scales with the samples."""

    a: float
    b: float
    c: float = 0.0
    max_rel_residual: float = 0.0
    points: int = 0

    def __call__(self, seq: float, batch: float = 1) -> float:
        return self.c + batch * (self.a * seq + self.b * seq * seq)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Quadratic":
        return cls(**data)


def fit_quadratic(seq: Sequence[float], values: Sequence[float], batch: Optional[Sequence[float]] = None,
                  intercept: bool = False) -> Quadratic:
    """Fit ``values`` (bytes) measured at sequence lengths ``seq`` and batch sizes ``batch`` (1).

    Too few distinct points for every term drops b (then c); a fit never invents a negative b or
    c: where one comes out < 0 the data do not support it and it is dropped.  Columns are scaled
    before solving (S^2 is ~1e7 times S)."""
    s = np.asarray(seq, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    n = np.ones_like(s) if batch is None else np.asarray(batch, dtype=np.float64)
    if s.shape != y.shape or s.shape != n.shape or s.size == 0:
        raise ValueError(f"need matching, non-empty seq, values and batch, got {s.shape}, {y.shape}, {n.shape}")
    distinct = len({(float(a), float(b)) for a, b in zip(s, n)})
    terms = ["a"] + (["c"] if intercept and distinct >= 2 else [])
    if distinct > len(terms):
        terms.insert(1, "b")
    coef = _solve(s, n, y, terms)
    for term in ("b", "c"):
        if coef.get(term, 0.0) < 0 and len(terms) > 1:
            terms.remove(term)
            coef = _solve(s, n, y, terms)
    model = Quadratic(coef["a"], coef.get("b", 0.0), coef.get("c", 0.0))
    pred = np.array([model(v, k) for v, k in zip(s, n)])
    rel = np.abs(pred - y) / np.maximum(np.abs(y), 1.0)
    return Quadratic(model.a, model.b, model.c, float(rel.max()), int(s.size))


def _solve(s: np.ndarray, n: np.ndarray, y: np.ndarray, terms: list[str]) -> dict[str, float]:
    column = {"a": n * s, "b": n * s * s, "c": np.ones_like(s)}
    X = np.stack([column[t] for t in terms], axis=1)
    scale = np.maximum(np.abs(X).max(axis=0), 1e-30)
    coef, *_ = np.linalg.lstsq(X / scale, y, rcond=None)
    return {t: float(v) for t, v in zip(terms, coef / scale)}
