"""The training fast path computes what the plain path computes (tiny model, CPU).

GPU-only kernels (FlashAttention varlen) are absent on the CPU: there the fast path takes its
per-sample SDPA fallback, which these tests check is taken and logged; the GPU run of
``bench/train_throughput.py`` repeats the plain-vs-fast check with the real kernel.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F

from reasonflow.train import fast
from reasonflow.train.data import IGNORE, Example, best_fit, in_order, varlen_batch
from reasonflow.train.trainer import (
    PLAIN, TrainSettings, build_model, checkpoint_root, configure, forward_loss, micro_batches,
)

LEVERS = {"attention": "varlen", "fused_loss": True, "fused_lora": True, "fused_norm_mlp": True,
          "pack_strategy": "best_fit", "checkpoint_layers": 1}


def _examples(seed=0, lengths=(37, 120, 5, 300, 64, 250, 2, 180)):
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(4000) for _ in range(n)]
        p = max(1, n // 5)
        out.append(Example(ids, [IGNORE] * p + ids[p:]))
    return out


def test_best_fit_keeps_every_sample_once_within_capacity():
    rng = random.Random(3)
    exs = [Example([i] * rng.randint(1, 900), [i] * 1) for i in range(200)]
    bins = best_fit(exs, 1000)
    flat = [e.input_ids[0] for b in bins for e in b]
    assert sorted(flat) == list(range(200))  # each sample exactly once
    assert all(sum(map(len, b)) <= 1000 for b in bins)
    assert all([e.input_ids[0] for e in b] == sorted(e.input_ids[0] for e in b) for b in bins)  # order kept in a row
    assert best_fit(exs, 1000) == bins  # deterministic
    assert len(bins) <= len(in_order(exs, 1000))
    assert sum(map(len, exs)) / (1000 * len(bins)) > 0.9  # tight rows


def test_varlen_batch_layout():
    exs = [Example([1, 2, 3], [IGNORE, 2, 3]), Example([4, 5], [IGNORE, 5])]
    b = varlen_batch(exs)
    assert b["input_ids"] == [1, 2, 3, 4, 5] and b["position_ids"] == [0, 1, 2, 0, 1]
    assert b["bounds"] == [0, 3, 5] and b["max_seqlen"] == 3 and b["real_tokens"] == 5
    assert b["labels"] == [IGNORE, 2, 3, IGNORE, 5]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_linear_cross_entropy_matches_full_logits(dtype, tol):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 32, generator=g).to(dtype).requires_grad_()
    w = torch.randn(300, 32, generator=g).to(dtype).requires_grad_()
    y = torch.randint(0, 300, (50,), generator=g)
    ref = F.cross_entropy((h @ w.t()).float(), y, reduction="sum") / 77
    ref.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = fast.linear_cross_entropy(h, w, y, 1 / 77, chunk=16)  # several chunks, a ragged last one
    got.backward()
    assert got.item() == pytest.approx(ref.item(), rel=tol)
    torch.testing.assert_close(h.grad.float(), gh.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(w.grad.float(), gw.float(), rtol=tol, atol=tol)


def test_fused_rmsnorm_and_swiglu_match_autograd():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(1)
    norm = LlamaRMSNorm(24, eps=1e-5)
    norm.weight.data = torch.randn(24, generator=g)
    x = torch.randn(2, 7, 24, generator=g, requires_grad=True)
    ref = norm(x)
    ref.square().sum().backward()
    gx, gwt = x.grad.clone(), norm.weight.grad.clone()
    x.grad = norm.weight.grad = None
    got = fast._rmsnorm_forward(norm, x)
    got.square().sum().backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(norm.weight.grad, gwt)

    a, b = (torch.randn(5, 9, generator=g, requires_grad=True) for _ in range(2))
    ref = F.silu(a) * b
    ref.square().sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    got = fast._SwiGLU.apply(a, b)
    got.square().sum().backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(a.grad, ga)
    torch.testing.assert_close(b.grad, gb)


@pytest.mark.slow
def test_compiled_kernels_equal_eager_ones():
    g = torch.Generator().manual_seed(2)
    args = {"rms_fwd": (torch.randn(6, 16, generator=g), torch.randn(16, generator=g), 1e-5),
            "swiglu_fwd": (torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)),
            "ce_chunk": (torch.randn(6, 40, generator=g), torch.randint(0, 40, (6,), generator=g), 0.25)}
    eager = {k: fast.KERNELS[k](*v) for k, v in args.items()}
    fast.use_compiled_kernels(list(args))
    try:
        for k, v in args.items():
            got, want = fast._compiled[k](*v), eager[k]
            for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    finally:
        fast.use_compiled_kernels([])


@pytest.mark.parametrize("dropout", [False, True])
def test_in_place_lora_ops_give_autograds_values_and_gradients(dropout):
    """``lora_linear`` (+ its backward op) against autograd on ``y = x·Wᵀ + s·(x_d·Aᵀ)·Bᵀ`` (``x_d``: the
    dropped-out input): eager in float64, compiled whole in float32; an input without grad gets none."""
    gen = torch.Generator().manual_seed(0)
    x0, w = torch.randn(37, 48, generator=gen, dtype=torch.float64), torch.randn(40, 48, generator=gen,
                                                                                     dtype=torch.float64)
    a0, b0 = torch.randn(8, 48, generator=gen, dtype=torch.float64), torch.randn(40, 8, generator=gen,
                                                                                     dtype=torch.float64)
    mask = (torch.rand(37, 48, generator=gen, dtype=torch.float64) > 0.3) * 1.4

    def run(fn, dtype, x_grad=True):
        x, a, b = (t.to(dtype, copy=True).requires_grad_(g) for t, g in ((x0, x_grad), (a0, True), (b0, True)))
        y = fn(x, w.to(dtype), a, b, mask.to(dtype))
        y.backward(torch.cos(y.detach()))
        return y.detach(), [t.grad for t in (x, a, b)]

    def fused(x, w, a, b, m):
        return fast.lora_linear(torch.tanh(x), w, a, b, 0.7, torch.tanh(x) * m if dropout else None)[0]

    def reference(x, w, a, b, m):
        h = torch.tanh(x)
        return h @ w.t() + 0.7 * ((h * m if dropout else h) @ a.t()) @ b.t()

    for dtype, f, tol in ((torch.float64, fused, 1e-12), (torch.float32, torch.compile(fused, fullgraph=True), 1e-4)):
        for x_grad in (True, False):
            (y, grads), (y_ref, grads_ref) = run(f, dtype, x_grad), run(reference, dtype, x_grad)
            torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
            assert (grads[0] is None) == (not x_grad)
            for g, r in zip(grads, grads_ref):
                if r is not None:
                    torch.testing.assert_close(g, r, rtol=tol, atol=tol)


def test_grouped_lora_op_gives_autograds_values_and_gradients():
    """``lora_linear_group`` (three layers of different widths and ranks reading one input, as q/k/v)
    against autograd on each ``y_i = x·W_iᵀ + s_i·(x·A_iᵀ)·B_iᵀ``: eager in float64, compiled whole in
    float32; an input without grad gets none."""
    gen = torch.Generator().manual_seed(1)
    shapes = ((40, 8), (16, 4), (16, 8))  # (out, rank) of each layer
    x0 = torch.randn(29, 48, generator=gen, dtype=torch.float64)
    ws = [torch.randn(o, 48, generator=gen, dtype=torch.float64) for o, _ in shapes]
    as0 = [torch.randn(r, 48, generator=gen, dtype=torch.float64) for _, r in shapes]
    bs0 = [torch.randn(o, r, generator=gen, dtype=torch.float64) for o, r in shapes]
    scales = [0.7, 2.0, -0.3]

    def run(fn, dtype, x_grad=True):
        x = x0.to(dtype, copy=True).requires_grad_(x_grad)
        lora_as, lora_bs = ([t.to(dtype, copy=True).requires_grad_() for t in ts] for ts in (as0, bs0))
        ys = fn(torch.tanh(x), [w.to(dtype) for w in ws], lora_as, lora_bs)
        torch.autograd.backward(ys, [torch.cos(y.detach()) for y in ys])
        return [y.detach() for y in ys], [x.grad] + [t.grad for t in lora_as + lora_bs]

    def grouped(h, ws, lora_as, lora_bs):
        return fast.lora_linear_group(h, ws, torch.cat(lora_as), lora_bs, scales)[:-1]

    def reference(h, ws, lora_as, lora_bs):
        return [h @ w.t() + s * (h @ a.t()) @ b.t() for w, a, b, s in zip(ws, lora_as, lora_bs, scales)]

    compiled = torch.compile(grouped, fullgraph=True)
    for dtype, f, tol in ((torch.float64, grouped, 1e-12), (torch.float32, compiled, 1e-4)):
        for x_grad in (True, False):
            (ys, grads), (ys_ref, grads_ref) = run(f, dtype, x_grad), run(reference, dtype, x_grad)
            for y, r in zip(ys, ys_ref):
                torch.testing.assert_close(y, r, rtol=tol, atol=tol)
            assert (grads[0] is None) == (not x_grad)
            for g, r in zip(grads, grads_ref):
                if r is not None:
                    torch.testing.assert_close(g, r, rtol=tol, atol=tol)


def test_varlen_kernel_absent_on_cpu_takes_logged_fallback(capsys):
    cpu = torch.device("cpu")
    assert fast.varlen_backend(cpu) == "sdpa-per-sample"
    fast._warned.discard("fallback")
    fast.register_attention(cpu)
    q = torch.randn(1, 4, 10, 8)
    k = v = torch.randn(1, 2, 10, 8)
    fast._BOUNDS.append([0, 4, 10])
    try:
        out, _ = fast.varlen_attention(None, q, k, v, None, scaling=8**-0.5, rf_cu_seqlens=torch.tensor([0, 4, 10]),
                                       rf_max_seqlen=6)
    finally:
        fast._BOUNDS.pop()
    assert "per sample" in capsys.readouterr().out
    # segment 2 attends only within itself: equal to SDPA on that slice alone
    want = F.scaled_dot_product_attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out[0, 4:], want[0].transpose(0, 1))


def test_unknown_varlen_kernel_is_named(monkeypatch):
    monkeypatch.setenv(fast.KERNELS_ENV, "fa4,fa9")
    with pytest.raises(ValueError, match=r"RF_VARLEN_KERNELS.*'fa9'"):
        fast.varlen_choice(torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention varlen needs a CUDA GPU (CPU: fallback)")
@pytest.mark.parametrize("kernel", ["fa2", "fa4"])
def test_gpu_varlen_kernel_matches_fallback_and_compiles_in_one_graph(kernel, monkeypatch):
    """Each varlen kernel that runs here (fa4 where flash-attn-4 is installed) gives the per-sample SDPA
    output and gradients, and a compiled function around it has no graph break (fullgraph=True)."""
    monkeypatch.setenv(fast.KERNELS_ENV, kernel)
    dev = torch.device("cuda")
    backend = fast.register_attention(dev)
    if backend == "sdpa-per-sample":
        pytest.skip(f"{kernel} varlen is not available here")
    assert backend == {"fa2": "flash-varlen", "fa4": "fa4-varlen"}[kernel]
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(1, h, 64, 128, generator=g).to(dev, torch.bfloat16).requires_grad_() for h in (8, 2, 2))
    cu = torch.tensor([0, 20, 64], dtype=torch.int32, device=dev)

    def attend(q, k, v):
        return fast.varlen_attention(None, q, k, v, None, scaling=128**-0.5, rf_cu_seqlens=cu, rf_max_seqlen=44)[0]

    dout = torch.randn(1, 64, 8, 128, generator=g).to(dev, torch.bfloat16)
    a = attend(q, k, v)
    grads = torch.autograd.grad(a, (q, k, v), dout)
    c = torch.compile(attend, fullgraph=True, dynamic=True)(q, k, v)
    cgrads = torch.autograd.grad(c, (q, k, v), dout)
    try:
        fast._KERNEL.clear()
        fast._BOUNDS.append([0, 20, 64])
        b = attend(q, k, v)
        bgrads = torch.autograd.grad(b, (q, k, v), dout)
    finally:
        fast._BOUNDS.pop()
    for x, y in zip((a, *grads), (b, *bgrads)):
        torch.testing.assert_close(x.float(), y.float(), rtol=2e-2, atol=2e-2)
    for x, y in zip((c, *cgrads), (a, *grads)):
        torch.testing.assert_close(x.float(), y.float(), rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def tiny(demo_dir):
    """The demo model with a non-zero adapter, so every LoRA weight takes part in the comparison."""
    def make(precision):
        torch.manual_seed(0)
        model = build_model(str(demo_dir / "model"), TrainSettings(lora_rank=8, lora_alpha=16, precision=precision,
                                                                   **PLAIN), torch.device("cpu"))
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
        return model
    return make


def _loss_and_grad(model, settings, examples):
    configure(model, settings)
    model.zero_grad(set_to_none=True)
    num = sum(t != IGNORE for e in examples for t in e.labels)
    total = 0.0
    for b in micro_batches(examples, settings, 4095):
        loss = forward_loss(model, b, num, torch.device("cpu"), settings)
        loss.backward()
        total += loss.item()
    grad = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])
    return total, grad


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_path_equals_plain_path(tiny, precision):
    """Each lever alone, then all of them (compiled layers included), against the plain path."""
    model = tiny(precision)
    exs = _examples()
    base = TrainSettings(precision=precision, max_length=512, loss_chunk=100, gradient_checkpointing=True, **PLAIN)
    loss_p, grad_p = _loss_and_grad(model, base, exs)
    rel, cos = (1e-5, 0.99999) if precision == "fp32" else (1e-2, 0.99)
    variants = [{k: v} for k, v in LEVERS.items()] + [LEVERS]
    if precision == "fp32":
        variants.append({**LEVERS, "compile_layers": True})
    for change in variants:
        loss_f, grad_f = _loss_and_grad(model, dataclasses.replace(base, **change), exs)
        assert loss_f == pytest.approx(loss_p, rel=rel), change
        assert F.cosine_similarity(grad_p, grad_f, dim=0).item() > cos, change
    configure(model, base)  # undo the compile for the other tests


@pytest.mark.slow
def test_fused_lora_runs_q_k_v_and_gate_up_as_one_op_each(tiny):
    """With the varlen path and ``fused_lora`` each decoder layer runs two grouped LoRA ops (q/k/v and
    gate/up) and one single-layer op each for o and down; ``LORA_FORM = "first"`` runs seven single ones."""
    model = tiny("fp32")
    exs = _examples(lengths=(30, 50))
    s = TrainSettings(precision="fp32", max_length=512, **LEVERS)
    layers = model.get_base_model().config.num_hidden_layers

    def ops(form):
        old, fast.LORA_FORM = fast.LORA_FORM, form
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                _loss_and_grad(model, s, exs)
        finally:
            fast.LORA_FORM = old
        return {e.key: e.count for e in prof.key_averages() if e.key.startswith("reasonflow::lora_linear")}

    assert ops("grouped") == {"reasonflow::lora_linear_group": 2 * layers, "reasonflow::lora_linear_group_bwd":
                              2 * layers, "reasonflow::lora_linear": 2 * layers, "reasonflow::lora_linear_bwd":
                              2 * layers}
    assert ops("first") == {"reasonflow::lora_linear": 7 * layers, "reasonflow::lora_linear_bwd": 7 * layers}


@pytest.mark.slow
def test_fast_path_does_not_attend_across_samples(tiny):
    """Packed (one varlen row) equals one sample at a time; a plain causal row over the same tokens does not."""
    model = tiny("fp32")
    exs = _examples(lengths=(30, 50, 20))
    s = TrainSettings(precision="fp32", max_length=512, **LEVERS)
    packed = _loss_and_grad(model, s, exs)
    assert len(micro_batches(exs, s, 0)) == 1
    single = _loss_and_grad(model, dataclasses.replace(s, packing=False), exs)
    assert len(micro_batches(exs, dataclasses.replace(s, packing=False), 0)) == 3
    assert packed[0] == pytest.approx(single[0], rel=1e-5)
    assert F.cosine_similarity(packed[1], single[1], dim=0).item() > 0.99999
    one = Example([t for e in exs for t in e.input_ids], [t for e in exs for t in e.labels])  # no boundaries
    assert _loss_and_grad(model, s, [one])[0] != pytest.approx(single[0], rel=1e-4)


def test_speed_switches_keep_the_checkpoint_folder(tmp_path):
    training = tmp_path / "t.jsonl"
    training.write_text("{}\n")
    plain = TrainSettings(**PLAIN)
    same = checkpoint_root(tmp_path, "m", str(training), plain)
    assert checkpoint_root(tmp_path, "m", str(training), TrainSettings(compile_layers=True)) == same
    assert checkpoint_root(tmp_path, "m", str(training), TrainSettings(lr=2e-4)) != same
    with pytest.raises(ValueError, match="train.attention"):
        TrainSettings(attention="flash")
