"""Rank-r kernels of the DEFT update; nothing here builds an out x out or out x in matrix.

Two associations of the same update  y = W0 x + B (s R x_d - right^T W0 x):

* factored:   A = s R - right^T W0 (r x in, once per step), y = W0 x + B (A x).  Extra cost over
  LoRA: r*out*in in forward and the same in backward (grad of right) -- independent of T.
* activation: u = (W0 x) right  (reuses the base output), y = W0 x + B (s R x_d - u).  Extra cost:
  T*out*r forward and 2*T*out*r backward; cheaper when T < 2*in/3 (see `AdapterLinear`).

`DeftActivationFn` implements the activation association with a hand-written backward.
"""

from __future__ import annotations

import torch

from .dense import dense_rows, is_quantized

_CHUNK_ROWS = 2048


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def right_t_weight(right: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """right^T @ W in the precision of `right` (fp32 or fp64), W upcast a row block at a time.

    A half-precision or quantised W is never copied whole to fp32: blocks of rows keep the
    transient small.  A quantised W is read as its dequantised values.
    """
    if W.dtype == right.dtype and not is_quantized(W):
        return right.transpose(0, 1) @ W
    out = torch.zeros(right.shape[1], W.shape[1], dtype=right.dtype, device=right.device)
    for i in range(0, W.shape[0], _CHUNK_ROWS):
        out.addmm_(right[i:i + _CHUNK_ROWS].transpose(0, 1), dense_rows(W, i, i + _CHUNK_ROWS, right.dtype))
    return out


def weight_times(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W @ v (W: out x in, v: in x r) in v's precision, W upcast a row block at a time."""
    if W.dtype == v.dtype and not is_quantized(W):
        return W @ v
    out = torch.empty(W.shape[0], v.shape[1], dtype=v.dtype, device=v.device)
    for i in range(0, W.shape[0], _CHUNK_ROWS):
        torch.mm(dense_rows(W, i, i + _CHUNK_ROWS, v.dtype), v, out=out[i:i + _CHUNK_ROWS])
    return out


class RightTWeightFn(torch.autograd.Function):
    """M = right^T W0 with a frozen W0; backward gives grad(right) = W0 grad(M)^T.

    Saves only references (right, W0), never an upcast copy of W0.
    """

    @staticmethod
    def forward(ctx, right: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(W)
        return right_t_weight(right, W)

    @staticmethod
    def backward(ctx, grad_M: torch.Tensor):
        (W,) = ctx.saved_tensors
        return weight_times(W, grad_M.transpose(0, 1)), None


def removal_factor(right: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """right^T W0 (r x in), differentiable w.r.t. right only (W0 is frozen)."""
    if W.requires_grad:
        return right.transpose(0, 1) @ _f32(W)
    return RightTWeightFn.apply(right, W)


class DeftActivationFn(torch.autograd.Function):
    """y = base + (x_d Rs^T - (base - bias) right) B^T for 2-D x, base (N x out), full precision.

    `base` is the base layer's output (with bias); `x_d` is dropout(x) or None (then x).
    Used when N < in/2: then keeping `base` for grad(right) = -(base - bias)^T gB costs less
    time (N*out*r) than recomputing it from W0 (out*in*r), for N x out memory -- what peft
    keeps too.  Fewer passes over N x out tensors than autograd on the same expression.
    """

    @staticmethod
    def forward(ctx, x, x_d, base, W, bias, B, right, Rs):
        xd = x if x_d is None else x_d
        u = base @ right
        if bias is not None:
            u = u - bias.to(u.dtype) @ right
        h = torch.addmm(u, xd, Rs.transpose(0, 1), beta=-1.0)  # x_d Rs^T - u
        y = torch.addmm(base, h, B.transpose(0, 1))
        ctx.same_x = x_d is None
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x_d if x_d is not None else x, base, bias, B, right, Rs, h)
        return y

    @staticmethod
    def backward(ctx, g):
        xd, base, bias, B, right, Rs, h = ctx.saved_tensors
        gB = g @ B                                   # N x r
        grad_B = g.transpose(0, 1) @ h               # out x r
        grad_Rs = gB.transpose(0, 1) @ xd            # r x in
        grad_right = base.transpose(0, 1) @ gB       # out x r, then the sign and the bias
        if ctx.has_bias:
            grad_right.sub_(bias.to(gB.dtype)[:, None] * gB.sum(dim=0)[None, :])
        grad_right.neg_()
        # The removal term reaches x through the base output: fold it into grad(base).
        grad_base = torch.addmm(g, gB, right.transpose(0, 1), alpha=-1.0)
        grad_inject = gB @ Rs
        if ctx.same_x:
            grad_x, grad_xd = grad_inject, None
        else:
            grad_x, grad_xd = None, grad_inject
        return grad_x, grad_xd, grad_base, None, None, grad_B, grad_right, grad_Rs
