"""The training fast path: the levers that take LoRA on one H100 from ~3k to >14k tokens/s.

Each lever is switched by a :class:`~reasonflow.train.trainer.TrainSettings` field and
measured one by one by ``bench/train_throughput.py`` (notes in ``bench/TRAINING_SPEED.md``):

- ``attention: varlen``: packed samples go through attention as variable-length
  sequences (``cu_seqlens``), never through a materialised block-diagonal mask.
  On CUDA the kernel is FlashAttention-4's varlen kernel where ``flash-attn-4`` is
  installed (``reasonflow.train.fa4``: custom ops that compiled layers keep in their
  graph; Hopper and newer), else PyTorch's FlashAttention-2 varlen kernel
  (``torch.nn.attention.varlen``); each must pass a self-test (forward and
  gradients against per-sample SDPA) first. Where neither runs (the CPU, an old
  torch) the same call runs one causal SDPA per sample: exact. The choice is logged
  (``train path: {"attention": "fa4-varlen" | "flash-varlen" | "sdpa-per-sample"}``);
  ``RF_VARLEN_KERNELS`` (default ``fa4,fa2``) orders or limits the candidates.
- ``fused_loss``: the LM head and cross entropy run over the answer positions
  only, in chunks, and the gradient with respect to the hidden states is formed
  in the forward pass, so fp32 logits of the whole row never exist.
- ``fused_lora``: the adapter runs in the activations' dtype (bf16 on GPU) with
  fp32 master weights, in one custom op with the base GEMM (:func:`lora_linear`,
  backward :func:`lora_linear_bwd`): ``s·B·A·x`` is written first and the base GEMM
  adds onto it, as do the input gradients in the backward, instead of PEFT's fp32
  matmuls, scale and add. Projections that read one input (q/k/v, gate/up) run as
  one op (:func:`lora_linear_group`): one A-GEMM over the input, one input gradient.
- ``fused_norm_mlp``: RMSNorm and SwiGLU as autograd functions that save only
  their inputs (bf16) instead of fp32 copies and intermediates; with
  ``compile_kernels`` their forward and backward bodies are compiled by
  ``torch.compile`` into one fused kernel each.
- ``checkpoint_layers``: activation checkpointing of the first N decoder layers
  only (selective instead of full recompute).

None of these changes the function computed: ``tests/test_train_fast.py`` checks
loss and LoRA gradients against the plain path on the tiny model.
"""

from __future__ import annotations

import inspect
import logging
import sys
import types

import torch
import torch.nn.functional as F

log = logging.getLogger("reasonflow.train.fast")
ATTENTION_NAME = "rf_varlen"
_warned: set[str] = set()
_BOUNDS: list[list[int]] = [[0]]  # sample boundaries of the micro-batch being run (per-sample fallback)


def _note(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(f"[fast path] {message}", flush=True)
        log.info(message)


# -- variable-length attention ----------------------------------------------------------------------

def _torch_varlen():
    """PyTorch's FlashAttention varlen entry point and how to ask it for causal GQA, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    kwargs = {}
    if "is_causal" in params:
        kwargs["is_causal"] = True
    elif "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # (-1, 0) = causal in the newer API
    else:
        return None
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    return varlen_attn, kwargs, "scale" in params


def _fa2_kernel():
    """FlashAttention-2 varlen through PyTorch, as ``f(q, k, v, cu_seqlens, max_seqlen, scale) -> out``."""
    found = _torch_varlen()
    if found is None:
        return None
    fn, extra, has_scale = found

    def call(q, k, v, cu, max_len, scale):
        return fn(q, k, v, cu, cu, max_len, max_len, **extra, **({"scale": scale} if has_scale else {}))

    return call


def _fa4_kernel():
    """FlashAttention-4 varlen (``flash-attn-4``), as ``f(q, k, v, cu_seqlens, max_seqlen, scale) -> out``."""
    from reasonflow.train import fa4

    return fa4.varlen_attention if fa4.available() else None


KERNELS_ENV = "RF_VARLEN_KERNELS"  # which varlen kernels to try, in order (default "fa4,fa2")
VARLEN_KERNELS = {"fa4": ("fa4-varlen", _fa4_kernel, 9), "fa2": ("flash-varlen", _fa2_kernel, 8)}  # + min. arch
_varlen_checked: dict[tuple, bool] = {}


def _varlen_selftest(device: torch.device, name: str, call) -> bool:
    """Run ``call`` once (forward + backward, GQA 4:1, head dim 128, two samples) against per-sample SDPA:
    the output and the gradients of q, k and v must agree to bf16 accuracy."""
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(48, h, 128, generator=g).to(device, torch.bfloat16).requires_grad_()
                   for h in (8, 2, 2))
        cu = torch.tensor([0, 20, 48], dtype=torch.int32, device=device)
        out = call(q, k, v, cu, 28, None)
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        ref = _per_sample_sdpa(q, k, v, [0, 20, 48], None)
        ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))

        def rel(a, b):
            return ((a.float() - b.float()).norm() / b.float().norm()).item()

        errs = [rel(out, ref)] + [rel(a, b) for a, b in zip(grads, ref_grads)]
        ok = max(errs) < 2e-2
        if not ok:
            _note(f"selftest-{name}", f"{name} varlen self-test failed (rel. errors out/dq/dk/dv "
                                      f"{', '.join(f'{e:.3g}' for e in errs)}): not used")
        return ok
    except Exception as exc:  # an old torch without backward, no GQA support, a kernel that fails to build, ...
        _note(f"selftest-{name}", f"{name} varlen unusable here ({type(exc).__name__}: {exc}): not used")
        return False


def _kernel_order() -> list[str]:
    import os

    names = [n.strip() for n in os.environ.get(KERNELS_ENV, "fa4,fa2").split(",") if n.strip()]
    bad = [n for n in names if n not in VARLEN_KERNELS]
    if bad:
        raise ValueError(f"{KERNELS_ENV}: unknown varlen kernel(s) {bad}; known: {sorted(VARLEN_KERNELS)}")
    return names


def varlen_choice(device: torch.device):
    """(backend name, kernel) for ``device``: the first of ``RF_VARLEN_KERNELS`` that exists here and
    passes its self-test, else ``("sdpa-per-sample", None)``."""
    order = _kernel_order()
    if device.type != "cuda":
        return "sdpa-per-sample", None
    major = torch.cuda.get_device_capability(device)[0]
    for name in order:
        backend, find, min_major = VARLEN_KERNELS[name]
        call = find() if major >= min_major else None
        if call is None:
            continue
        key = (name, device.type, device.index)
        if key not in _varlen_checked:
            _varlen_checked[key] = _varlen_selftest(device, name, call)
        if _varlen_checked[key]:
            return backend, call
    return "sdpa-per-sample", None


def varlen_backend(device: torch.device) -> str:
    """``fa4-varlen`` or ``flash-varlen`` where that kernel runs (and passes its self-test), else
    ``sdpa-per-sample``."""
    return varlen_choice(device)[0]


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: (B, H, T, D) in, (B, T, H, D) out, segments from kwargs.

    The micro-batch is one flattened sequence (B == 1); ``rf_cu_seqlens`` (int32, on the
    device) delimits the samples. The per-sample fallback reads the same boundaries as a
    Python list from :data:`_BOUNDS` (kept out of the kwargs so compiled layers never
    specialise on them).
    """
    cu, max_len = kwargs.get("rf_cu_seqlens"), kwargs.get("rf_max_seqlen")
    if cu is None:
        raise ValueError("attention 'varlen' needs rf_cu_seqlens: use reasonflow's varlen micro-batches")
    if query.shape[0] != 1:
        raise ValueError(f"varlen attention expects one flattened sequence per micro-batch, got batch {query.shape[0]}")
    if dropout:
        raise ValueError("varlen attention does not implement attention dropout")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D) views
    if _KERNEL:  # chosen once by register_attention(), outside any compiled region
        out = _KERNEL[0](q, k, v, cu, max_len, scaling)
    else:
        _note("fallback", f"varlen attention on {q.device.type}: FlashAttention varlen kernel not available, "
                          "running one causal SDPA per sample (exact, slower)")
        out = _per_sample_sdpa(q, k, v, _BOUNDS[-1], scaling)
    return out[None], None


def _per_sample_sdpa(q, k, v, bounds: list[int], scale):
    """Causal SDPA on each ``[bounds[i], bounds[i+1])`` slice of (T, H, D) tensors: exact, no mask."""
    out = torch.empty_like(q)
    for s, e in zip(bounds[:-1], bounds[1:]):
        seg = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1)[None], k[s:e].transpose(0, 1)[None], v[s:e].transpose(0, 1)[None],
            is_causal=True, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
        out[s:e] = seg[0].transpose(0, 1)
    return out


_KERNEL: list = []  # [f(q, k, v, cu_seqlens, max_seqlen, scale)] when a varlen kernel is in use


def register_attention(device: torch.device) -> str:
    """Register the ``rf_varlen`` attention and pick its kernel for ``device``; returns the backend name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, varlen_attention)
    backend, call = varlen_choice(device)
    _KERNEL.clear()
    if call is not None:
        _KERNEL.append(call)
    return backend


# -- fused linear + cross entropy -------------------------------------------------------------------

class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i · Wᵀ, y_i) · scale, chunked; dL/dh is formed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, chunk):
        n = hidden.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        ctx.weight_dtype = weight.dtype
        for s in range(0, n, chunk):
            h, y = hidden[s : s + chunk], targets[s : s + chunk]
            if "ce_chunk" in _compiled and grad_w is None:  # one fused pass: bf16 logits in, bf16 grad out
                loss, g = _compiled["ce_chunk"](h @ weight.t(), y, scale)
                total += loss
                if grad_h is not None:
                    grad_h[s : s + chunk] = g @ weight
                continue
            logits = (h @ weight.t()).float()  # what lm_head + .float() gives, one chunk at a time
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None])[:, 0]).sum()
            if grad_h is None and grad_w is None:
                continue
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs[torch.arange(len(y), device=y.device), y] -= 1.0
            g = probs.mul_(scale).to(hidden.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = g @ weight
            if grad_w is not None:
                grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def linear_cross_entropy(hidden, weight, targets, scale: float, chunk: int = 4096):
    """Loss ``Σ CE(hidden @ weightᵀ, targets) · scale`` without materialising all logits."""
    return _LinearCrossEntropy.apply(hidden, weight, targets, scale, chunk)


# -- fused RMSNorm and SwiGLU -----------------------------------------------------------------------

def _rms_fwd(x, w, eps: float):
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * (xf * rstd).to(x.dtype), rstd


def _rms_bwd(dy, x, w, rstd):
    xhat = x.float() * rstd
    g = (dy * w).float()
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    return dx.to(x.dtype)


def _swiglu_fwd(g, u):
    return F.silu(g) * u


def _swiglu_bwd(dy, g, u):
    gf, uf, dyf = g.float(), u.float(), dy.float()
    sig = torch.sigmoid(gf)
    silu = gf * sig
    dg = dyf * uf * sig * (1 + gf * (1 - sig))
    return dg.to(g.dtype), (dyf * silu).to(u.dtype)


def _ce_chunk(logits, y, scale: float):
    """(Σ CE, dCE/dlogits · scale) of one chunk of bf16 logits: compiled into one reduction + one pointwise pass."""
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1, keepdim=True)
    loss = (lse[:, 0] - lf.gather(1, y[:, None])[:, 0]).sum()
    hit = torch.arange(lf.shape[1], device=lf.device)[None, :] == y[:, None]
    grad = (torch.exp(lf - lse) - hit.to(lf.dtype)) * scale
    return loss, grad.to(logits.dtype)


KERNELS = {"rms_fwd": _rms_fwd, "rms_bwd": _rms_bwd, "swiglu_fwd": _swiglu_fwd, "swiglu_bwd": _swiglu_bwd,
           "ce_chunk": _ce_chunk}
_compiled: dict[str, object] = {}


def use_compiled_kernels(names) -> None:
    """Route the named fused ops through ``torch.compile``d bodies (one fused kernel each); others run eager."""
    for name in list(_compiled):
        if name not in names:
            del _compiled[name]
    for name in names:
        _compiled.setdefault(name, torch.compile(KERNELS[name], dynamic=True))


def _k(name: str):
    return _compiled.get(name, KERNELS[name])


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, eps):
        y, rstd = _k("rms_fwd")(x, w, eps)
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, rstd = ctx.saved_tensors
        dx = _k("rms_bwd")(dy, x, w, rstd)
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (dy * (x.float() * rstd).to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(w.dtype)
        return dx, dw, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, u):
        ctx.save_for_backward(g, u)
        return _k("swiglu_fwd")(g, u)

    @staticmethod
    def backward(ctx, dy):
        g, u = ctx.saved_tensors
        return _k("swiglu_bwd")(dy, g, u)


def _rmsnorm_forward(self, hidden_states):
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    """SwiGLU MLP: gate and up through :func:`_project` (one op with ``fused_lora``), the product through
    :class:`_SwiGLU` with ``fused_norm_mlp``."""
    gate, up = _project(self, x, ("gate_proj", "up_proj"))
    return self.down_proj(_SwiGLU.apply(gate, up) if self._rf_swiglu else self.act_fn(gate) * up)


# -- fused LoRA -------------------------------------------------------------------------------------

LORA_FORMS = ("grouped", "first", "addmm")
# "grouped": as "first", and the projections that read one input (q/k/v, gate/up) run as one op with one
# A-GEMM; "first": one op per layer, the adapter's product written first and the base GEMM accumulating
# onto it (beta = 1); "addmm": no op, one addmm after the base layer. bench/train_throughput.py --lora
# measures them side by side.
LORA_FORM = "grouped"


@torch.library.custom_op("reasonflow::lora_linear", mutates_args=())
def lora_linear(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float,
                x_drop: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, a)`` for 2-D ``x``: ``a = x_drop·Aᵀ`` and ``y = x·Wᵀ + scale·a·Bᵀ`` (``x_drop``: the adapter's
    input after dropout, None for none).

    One op, opaque to ``torch.compile``, because the compiler lowers ``addmm(y, a, b)`` to a copy of
    ``y`` followed by the GEMM: a full extra pass over every LoRA layer's output (2.7% of the 8B step).
    The rank-r product ``scale·a·Bᵀ`` is written first and the base GEMM adds onto it in its epilogue
    (``beta = 1``), so the output is written once by a memory-bound kernel instead of read and written
    by one. The frozen ``weight`` gets no gradient.
    """
    a = (x if x_drop is None else x_drop) @ lora_a.t()
    return (a @ (lora_b * scale).t()).addmm_(x, weight.t()), a


@lora_linear.register_fake
def _(x, weight, lora_a, lora_b, scale, x_drop):
    return x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(x.shape[0], lora_a.shape[0])


@torch.library.custom_op("reasonflow::lora_linear_bwd", mutates_args=())
def lora_linear_bwd(grad_y: torch.Tensor, x_in: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor,
                    lora_b: torch.Tensor, a: torch.Tensor, scale: float, need_x: bool,
                    dropped: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`lora_linear`: ``(x, x_drop, A, B)``; ``x`` and ``x_drop`` are empty where not needed.

    An op of its own for the same reason as the forward: traced, ``addmm_`` would become a copy and
    an ``addmm``. Without dropout both paths' input gradients go into one buffer, the rank-r term
    first and the base GEMM accumulating onto it.
    """
    grad_a = grad_y @ (lora_b * scale)
    grad_lora_a, grad_lora_b = grad_a.t() @ x_in, (grad_y.t() @ a).mul_(scale)
    grad_x, grad_drop = grad_y.new_empty(0), grad_y.new_empty(0)  # distinct: outputs may not alias
    if need_x and dropped:
        grad_x, grad_drop = grad_y @ weight, grad_a @ lora_a
    elif need_x:
        grad_x = (grad_a @ lora_a).addmm_(grad_y, weight)
    return grad_x, grad_drop, grad_lora_a, grad_lora_b


@lora_linear_bwd.register_fake
def _(grad_y, x_in, weight, lora_a, lora_b, a, scale, need_x, dropped):
    grad_x = grad_y.new_empty(grad_y.shape[0], weight.shape[1]) if need_x else grad_y.new_empty(0)
    grad_drop = grad_y.new_empty(grad_y.shape[0], weight.shape[1]) if need_x and dropped else grad_y.new_empty(0)
    return grad_x, grad_drop, lora_a.new_empty(lora_a.shape), lora_b.new_empty(lora_b.shape)


def _lora_linear_setup(ctx, inputs, output):
    x, weight, lora_a, lora_b, scale, x_drop = inputs
    ctx.save_for_backward(x if x_drop is None else x_drop, weight, lora_a, lora_b, output[1])
    ctx.scale, ctx.dropped = scale, x_drop is not None
    ctx.mark_non_differentiable(output[1])


def _lora_linear_backward(ctx, grad_y, _grad_a):
    need_x = ctx.needs_input_grad[0] or (ctx.dropped and ctx.needs_input_grad[5])
    grad_x, grad_drop, grad_lora_a, grad_lora_b = lora_linear_bwd(grad_y, *ctx.saved_tensors, ctx.scale, need_x,
                                                                  ctx.dropped)
    return (grad_x if need_x else None), None, grad_lora_a, grad_lora_b, None, \
        (grad_drop if need_x and ctx.dropped else None)


lora_linear.register_autograd(_lora_linear_backward, setup_context=_lora_linear_setup)


def _splits(lora_bs) -> list[tuple[int, int]]:
    """Column ranges of each adapter's rank in the stacked ``a``."""
    out, start = [], 0
    for b in lora_bs:
        out.append((start, start + b.shape[1]))
        start += b.shape[1]
    return out


@torch.library.custom_op("reasonflow::lora_linear_group", mutates_args=())
def lora_linear_group(x: torch.Tensor, weights: list[torch.Tensor], lora_a: torch.Tensor,
                      lora_bs: list[torch.Tensor], scales: list[float]) -> list[torch.Tensor]:
    """``[y_1, …, y_n, a]`` for n LoRA layers that read the same 2-D ``x`` (q/k/v, gate/up): ``lora_a`` is
    their A matrices stacked (``[Σr, in]``), ``a = x·lora_aᵀ`` is one GEMM that reads ``x`` once, and
    ``y_i = x·W_iᵀ + scale_i·a_i·B_iᵀ`` as in :func:`lora_linear`."""
    a = x @ lora_a.t()
    return [(a[:, s:e] @ (b * scale).t()).addmm_(x, w.t())
            for w, b, scale, (s, e) in zip(weights, lora_bs, scales, _splits(lora_bs))] + [a]


@lora_linear_group.register_fake
def _(x, weights, lora_a, lora_bs, scales):
    return [x.new_empty(x.shape[0], w.shape[0]) for w in weights] + [x.new_empty(x.shape[0], lora_a.shape[0])]


@torch.library.custom_op("reasonflow::lora_linear_group_bwd", mutates_args=())
def lora_linear_group_bwd(grad_ys: list[torch.Tensor], x: torch.Tensor, weights: list[torch.Tensor],
                          lora_a: torch.Tensor, lora_bs: list[torch.Tensor], a: torch.Tensor, scales: list[float],
                          need_x: bool) -> list[torch.Tensor]:
    """Gradients of :func:`lora_linear_group`: ``[x, A (stacked), B_1, …, B_n]`` (``x`` empty where not
    needed). The stacked A's gradient is one GEMM over ``x``; the input gradient is one rank-Σr GEMM
    that every base GEMM then accumulates onto, so no sum of n full-size gradients is formed."""
    cols = _splits(lora_bs)
    grad_a = torch.cat([g @ (b * scale) for g, b, scale in zip(grad_ys, lora_bs, scales)], dim=1)
    grad_bs = [(g.t() @ a[:, s:e]).mul_(scale) for g, scale, (s, e) in zip(grad_ys, scales, cols)]
    grad_x = x.new_empty(0)
    if need_x:
        grad_x = grad_a @ lora_a
        for g, w in zip(grad_ys, weights):
            grad_x.addmm_(g, w)
    return [grad_x, grad_a.t() @ x] + grad_bs


@lora_linear_group_bwd.register_fake
def _(grad_ys, x, weights, lora_a, lora_bs, a, scales, need_x):
    grad_x = x.new_empty(x.shape) if need_x else x.new_empty(0)
    return [grad_x, lora_a.new_empty(lora_a.shape)] + [b.new_empty(b.shape) for b in lora_bs]


def _lora_linear_group_setup(ctx, inputs, output):
    x, weights, lora_a, lora_bs, scales = inputs
    ctx.save_for_backward(x, lora_a, output[-1], *weights, *lora_bs)
    ctx.n, ctx.scales = len(weights), scales
    ctx.mark_non_differentiable(output[-1])


def _lora_linear_group_backward(ctx, grads):
    x, lora_a, a, *rest = ctx.saved_tensors
    weights, lora_bs = rest[:ctx.n], rest[ctx.n:]
    grad_ys = [torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device) if g is None else g
               for g, w in zip(grads[:ctx.n], weights)]
    grad_x, grad_lora_a, *grad_bs = lora_linear_group_bwd(grad_ys, x, weights, lora_a, lora_bs, a, ctx.scales,
                                                          ctx.needs_input_grad[0])
    return (grad_x if ctx.needs_input_grad[0] else None), [None] * ctx.n, grad_lora_a, grad_bs, None


lora_linear_group.register_autograd(_lora_linear_group_backward, setup_context=_lora_linear_group_setup)


def _adapter(layer):
    """``(name, dropout)`` of the one active adapter of a PEFT LoRA layer this module can run, else None
    (disabled or merged adapters, several active, DoRA-like variants: PEFT's own forward)."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1 \
            or layer.active_adapters[0] in getattr(layer, "lora_variant", {}):
        return None
    name = layer.active_adapters[0]
    return (name, layer.lora_dropout[name]) if name in layer.lora_A else None


def _in_op(layer, x) -> bool:
    """The base layer is one the LoRA ops take: a frozen bias-free ``nn.Linear`` in ``x``'s dtype."""
    base = layer.base_layer
    return LORA_FORM != "addmm" and type(base) is torch.nn.Linear and base.bias is None \
        and base.weight.dtype == x.dtype and not base.weight.requires_grad


def _lora_forward(self, x, *args, **kwargs):
    """y = W x + s · B (A x), adapter in the activations' dtype, in one op with the base GEMM."""
    found = None if args or kwargs else _adapter(self)
    if found is None:
        return type(self).forward(self, x, *args, **kwargs)
    name, dropout = found
    x_drop = None if isinstance(dropout, torch.nn.Identity) else dropout(x)
    lora_a, lora_b = self.lora_A[name].weight.to(x.dtype), self.lora_B[name].weight.to(x.dtype)
    if _in_op(self, x):
        flat = x.reshape(-1, x.shape[-1])
        y, _ = lora_linear(flat, self.base_layer.weight, lora_a, lora_b, float(self.scaling[name]),
                           None if x_drop is None else x_drop.reshape(flat.shape))
        return y.view(*x.shape[:-1], y.shape[-1])
    a = F.linear(x if x_drop is None else x_drop, lora_a)  # other base layers: one addmm after the base
    y = self.base_layer(x)
    shape = y.shape
    y = torch.addmm(y.reshape(-1, shape[-1]), a.reshape(-1, a.shape[-1]), lora_b.t(), alpha=self.scaling[name])
    return y.view(shape)


def _project(owner, x, names: tuple[str, ...]) -> list:
    """``[owner.<name>(x) for name in names]``, through one :func:`lora_linear_group` where every layer is a
    patched LoRA layer the op takes, without dropout (``LORA_FORM == "grouped"``)."""
    layers = [getattr(owner, n) for n in names]
    found = [_adapter(m) if "forward" in m.__dict__ and hasattr(m, "lora_A") else None for m in layers]
    if LORA_FORM != "grouped" or any(f is None or not isinstance(f[1], torch.nn.Identity) or not _in_op(m, x)
                                     for f, m in zip(found, layers)):
        return [m(x) for m in layers]
    flat = x.reshape(-1, x.shape[-1])
    outs = lora_linear_group(flat, [m.base_layer.weight for m in layers],
                             torch.cat([m.lora_A[f[0]].weight.to(x.dtype) for f, m in zip(found, layers)]),
                             [m.lora_B[f[0]].weight.to(x.dtype) for f, m in zip(found, layers)],
                             [float(m.scaling[f[0]]) for f, m in zip(found, layers)])
    return [y.view(*x.shape[:-1], y.shape[-1]) for y in outs[:-1]]


def _attention_forward(self, hidden_states, position_embeddings=None, attention_mask=None, *args, **kwargs):
    """Llama-style attention for training on the ``rf_varlen`` path, q/k/v through :func:`_project`.

    The same steps as transformers' Llama attention (projections, RoPE, attention, output projection);
    anything else (a KV cache, another attention implementation) runs the model's own forward."""
    if args or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None \
            or position_embeddings is None or self.config._attn_implementation != ATTENTION_NAME:
        return type(self).forward(self, hidden_states, position_embeddings, attention_mask, *args, **kwargs)
    input_shape = hidden_states.shape[:-1]
    q, k, v = (t.view(*input_shape, -1, self.head_dim).transpose(1, 2)
               for t in _project(self, hidden_states, ("q_proj", "k_proj", "v_proj")))
    q, k = self._rf_rotary(q, k, *position_embeddings)
    out, weights = varlen_attention(self, q, k, v, attention_mask, scaling=self.scaling,
                                    dropout=self.attention_dropout if self.training else 0.0, **kwargs)
    return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


# -- applying and removing the levers ---------------------------------------------------------------

def _is_rmsnorm(mod) -> bool:
    return type(mod).__name__.endswith("RMSNorm") and hasattr(mod, "variance_epsilon") and hasattr(mod, "weight")


def _is_swiglu_mlp(mod) -> bool:
    act = getattr(getattr(mod, "config", None), "hidden_act", None)
    return all(hasattr(mod, n) for n in ("gate_proj", "up_proj", "down_proj")) and act == "silu"


def _rotary_of(mod):
    """``apply_rotary_pos_emb`` of a Llama-style attention module's modeling file, or None when the module
    is not one :func:`_attention_forward` reproduces (exactly q/k/v/o projections, no q/k norms)."""
    names = {n for n, _ in mod.named_children()}
    if names != {"q_proj", "k_proj", "v_proj", "o_proj"} or not all(
            hasattr(mod, a) for a in ("config", "head_dim", "scaling", "attention_dropout")):
        return None
    return getattr(sys.modules.get(type(mod).__module__), "apply_rotary_pos_emb", None)


def apply_fused_modules(model, fused_lora: bool, fused_norm_mlp: bool) -> dict:
    """Patch module instances in place (idempotent; ``False`` restores the originals). With ``fused_lora``
    the MLPs and Llama-style attention modules are patched too, so that projections reading one input
    run as one op (:func:`_project`)."""
    from peft.tuners.lora import Linear as LoraLinear

    counts = {"lora": 0, "rmsnorm": 0, "mlp": 0, "attention": 0}
    for mod in model.modules():
        extra = {}
        if isinstance(mod, LoraLinear):
            kind, on, fwd = "lora", fused_lora, _lora_forward
        elif _is_rmsnorm(mod):
            kind, on, fwd = "rmsnorm", fused_norm_mlp, _rmsnorm_forward
        elif _is_swiglu_mlp(mod):
            kind, on, fwd = "mlp", fused_norm_mlp or fused_lora, _mlp_forward
            extra = {"_rf_swiglu": fused_norm_mlp}
        elif (rotary := _rotary_of(mod)) is not None:
            kind, on, fwd = "attention", fused_lora, _attention_forward
            extra = {"_rf_rotary": rotary}
        else:
            continue
        for name in ("forward", "_rf_swiglu", "_rf_rotary"):
            mod.__dict__.pop(name, None)
        if on:
            mod.forward = types.MethodType(fwd, mod)
            mod.__dict__.update(extra)
            counts[kind] += 1
    return counts


def compile_layers(model, enabled: bool) -> int:
    """``torch.compile`` every decoder layer (dynamic shapes) or undo it; returns how many."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    n = 0
    for block in model.modules():
        if isinstance(block, GradientCheckpointingLayer):
            if enabled:
                block.compile(dynamic=True)
                n += 1
            else:
                block._compiled_call_impl = None
    return n


def set_checkpoint_layers(model, enabled: bool, layers: int) -> int:
    """Checkpoint the first ``layers`` decoder layers (-1 = all); returns how many are checkpointed."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x names
        enable = lambda: base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)  # noqa: E731
        disable = base.activation_checkpointing_disable
    else:
        enable = lambda: base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # noqa: E731
        disable = base.gradient_checkpointing_disable
    if not enabled:
        disable()
        return 0
    enable()
    blocks = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    n = len(blocks) if layers < 0 else min(layers, len(blocks))
    for i, block in enumerate(blocks):
        block.gradient_checkpointing = i < n
    return n


# -- the fast forward -------------------------------------------------------------------------------

def _to_device(values, device: torch.device, dtype=torch.long) -> torch.Tensor:
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":  # pinned + non_blocking: no host sync, the copy queues behind the running work
        return t.pin_memory().to(device, non_blocking=True)
    return t


def varlen_loss(model, batch: dict, num_items: int, device: torch.device, fused_loss: bool, chunk: int):
    """Loss of one varlen micro-batch: answer tokens' CE summed, divided by ``num_items``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    bounds = batch["bounds"]
    labels = batch["labels"]
    # next-token targets; a sample's last token predicts nothing (the next sample starts anew)
    targets = labels[1:] + [-100]
    for end in bounds[1:]:
        targets[end - 1] = -100
    keep = [i for i, t in enumerate(targets) if t != -100]
    ids = _to_device(batch["input_ids"], device)[None]
    pos = _to_device(batch["position_ids"], device)[None]
    attn = {"rf_cu_seqlens": _to_device(bounds, device, torch.int32), "rf_max_seqlen": batch["max_seqlen"]}
    _BOUNDS.append(bounds)
    try:
        if not fused_loss:
            logits = base(input_ids=ids, position_ids=pos, use_cache=False, **attn).logits[0].float()
            return F.cross_entropy(logits, _to_device(targets, device), ignore_index=-100, reduction="sum") / num_items
        hidden = base.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False, **attn).last_hidden_state[0]
    finally:
        _BOUNDS.pop()
    keep_t = _to_device(keep, device)
    return linear_cross_entropy(hidden.index_select(0, keep_t), base.get_output_embeddings().weight,
                                _to_device([targets[i] for i in keep], device), 1.0 / num_items, chunk)
