"""FlashAttention-4 varlen kernels (PyPI ``flash-attn-4``, CuTe DSL) as PyTorch custom ops.

The fast path's ``attention: varlen`` runs these on Hopper/Blackwell GPUs where the package is
installed and passes :func:`reasonflow.train.fast.varlen_backend`'s self-test: causal attention over
packed samples (``cu_seqlens``) with grouped-query heads handled natively (no K/V repeat), 1.8-2.0x
the speed of FlashAttention-2 varlen on the 8B geometry (README "Training speed").

Why custom ops: FA4's own ``flash_attn_varlen_func`` is an ``autograd.Function`` whose kernels are
compiled by the CuTe DSL at first use; ``torch.compile`` cannot trace into it and would split every
compiled decoder layer around it. ``reasonflow::fa4_varlen_fwd`` / ``_bwd`` are opaque to the
compiler (with fake implementations for shapes), so the compiled layers keep attention in their
graph. They call FA4's forward and backward entry points (``flash_attn.cute.interface``), whose
names and return values this module pins: ``_flash_attn_fwd`` returns ``(out, lse, ...)`` in
4.0.0b36 (torch 2.11's own FA4 switch expected two values and failed).
"""

from __future__ import annotations

import warnings

import torch

# FA4 hands its optional ``aux_data`` (None here) to the CuTe DSL compiler, which warns once per compiled
# kernel that it cannot be a JIT argument: harmless, and it would fill every training log.
warnings.filterwarnings("ignore", message=r"Argument aux_data \(position \d+\) cannot be converted to a JitArgument",
                        category=UserWarning)


def available() -> str | None:
    """The installed ``flash-attn-4`` version, or None (not installed, or its DSL does not import)."""
    try:
        import flash_attn.cute.interface  # noqa: F401
        from importlib.metadata import version

        return version("flash-attn-4")
    except Exception:  # ImportError, or the CuTe DSL's own import-time errors on machines without it
        return None


@torch.library.custom_op("reasonflow::fa4_varlen_fwd", mutates_args=(), device_types="cuda")
def varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of packed (T, H, D) q and (T, H_kv, D) k/v: (out (T, H, D), lse (H, T) fp32)."""
    from flash_attn.cute.interface import _flash_attn_fwd

    out, lse = _flash_attn_fwd(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen,
                               max_seqlen_k=max_seqlen, softmax_scale=scale, causal=True, return_lse=True)[:2]
    return out, lse


@varlen_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2]), q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)


@torch.library.custom_op("reasonflow::fa4_varlen_bwd", mutates_args=(), device_types="cuda")
def varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
               scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from flash_attn.cute.interface import _flash_attn_bwd

    dq, dk, dv = _flash_attn_bwd(q, k, v, out, dout, lse, scale, True, cu_seqlens_q=cu_seqlens,
                                 cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen)[:3]
    return dq, dk, dv


@varlen_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = varlen_bwd(dout.contiguous(), q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.scale)
    return dq, dk, dv, None, None, None


varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


def varlen_attention(q, k, v, cu_seqlens, max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """Causal varlen attention with FA4: (T, H, D) views in (last dim contiguous), (T, H, D) out."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return varlen_fwd(q, k, v, cu_seqlens, int(max_seqlen), float(scale))[0]
