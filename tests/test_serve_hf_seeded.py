"""ChatGenerator (the Triton Python backend's HF ``generate`` engine) in-process: seeded sampling in batches.

A seeded sampled row must give the same tokens alone and inside a batch of other rows (other seeds,
temperatures, top_p values and prompt lengths), and that batch must run as ONE ``generate`` call.
Tiny demo model on the CPU in float32; a few seconds.
"""

from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def gen(demo_dir):
    from reasonflow.serve.backend_model import ChatGenerator

    return ChatGenerator(str(demo_dir / "model"), device="cpu", dtype="float32")


@pytest.fixture
def calls(gen, monkeypatch):
    """Every ``model.generate`` call of ``gen``: (batch size, new tokens per row as lists)."""
    seen = []
    real = gen.model.generate

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        width = kwargs["input_ids"].shape[1]
        seen.append((out.shape[0], out[:, width:].tolist()))
        return out

    monkeypatch.setattr(gen.model, "generate", counting)
    return seen


def _question(i: int) -> str:
    return " ".join(["Please think about question"] + ["and more"] * (i % 5) + [f"{i}?"])


def _row(gen, question, *, seed=None, temperature=1.0, top_p=1.0, max_tokens=24, system="detailed thinking off"):
    from reasonflow.serve.backend_model import Row

    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    row = Row(messages=msgs, model="base", max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    gen.prepare(row)
    return row


def _result(row):
    return row.text, row.finish_reason, row.completion_tokens


# --------------------------------------------------------------------------------------------- sample_token
def test_sample_token_follows_temperature_and_nucleus():
    import torch

    from reasonflow.serve.backend_model import sample_token

    logits = torch.tensor([2.0, 1.0, 1.0, 0.5, -1.0, float("-inf"), 0.0])
    n = 3000
    g = torch.Generator().manual_seed(0)
    us = torch.rand(n, len(logits), generator=g, dtype=torch.float64)
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9), (1.5, 0.5), (1.0, 0.3), (2.0, 0.999)]:
        p = torch.softmax(logits.double() / temperature, 0)
        sp, si = torch.sort(p, descending=True, stable=True)
        keep = (torch.cumsum(sp, 0) - sp) < top_p  # the mass before a token is < top_p
        expected = torch.zeros_like(p)
        expected[si[keep]] = sp[keep] / sp[keep].sum()
        counts = torch.zeros_like(p)
        for u in us:
            counts[int(sample_token(logits, temperature, top_p, u))] += 1
        assert torch.equal(counts > 0, expected > 0), (temperature, top_p, counts)
        # multinomial noise: 5 standard deviations
        assert torch.all((counts / n - expected).abs() <= 5 * (expected * (1 - expected) / n).sqrt() + 1e-12), (
            temperature, top_p, counts / n, expected)
    # a uniform of 0 is never chosen; the other uniforms decide
    u = torch.full((7,), 0.5, dtype=torch.float64)
    assert int(sample_token(logits, 1.0, 1.0, u)) == 0
    u[0] = 0.0
    assert int(sample_token(logits, 1.0, 1.0, u)) in (1, 2)
    # a large, flat vocabulary: the CPU's thresholded sort gives the nucleus of a full sort
    torch.manual_seed(0)
    big = torch.randn(20_000) * 0.5
    p = torch.softmax(big.double(), 0)
    sp, si = torch.sort(p, descending=True, stable=True)
    nucleus = set(si[(torch.cumsum(sp, 0) - sp) < 0.95].tolist())
    assert len(nucleus) > 15_000  # flat: the nucleus reaches below the first thresholds
    picks = [int(sample_token(big, 1.0, 0.95, torch.rand(20_000, generator=g, dtype=torch.float64)))
             for _ in range(200)]
    assert set(picks) <= nucleus and len(set(picks)) > 150


def test_row_sampler_finished_rows_draw_nothing():
    import torch

    from reasonflow.serve.backend_model import RowSampler

    stop, pad, width, vocab = 3, 0, 4, 10
    sampler = RowSampler(width, [1.0, 1.0, 1.0], [1.0, 0.9, 1.0], [1, 2, 3], [5, 5, 1], [stop], pad)
    scores = torch.randn(3, vocab)
    first = sampler(torch.zeros(3, width, dtype=torch.long), scores)
    assert sampler.draws == [1, 1, 1]
    assert all(int(torch.isfinite(r).sum()) == 1 and float(r.max()) == 0.0 for r in first)
    ids = torch.cat([torch.zeros(3, width, dtype=torch.long), torch.tensor([[stop], [5], [5]])], dim=1)
    second = sampler(ids, scores)
    # row 0 emitted the stop token, row 2 reached its max_tokens=1: only row 1 draws again
    assert sampler.draws == [1, 2, 1]
    assert int(second[0].argmax()) == pad and int(second[2].argmax()) == pad
    # the same seed, alone: the same first two tokens as row 1 had in the batch
    solo = RowSampler(width, [1.0], [0.9], [2], [5], [stop], pad)
    assert int(solo(ids[1:2, :width], scores[1:2]).argmax()) == int(first[1].argmax())
    assert int(solo(ids[1:2], scores[1:2]).argmax()) == int(second[1].argmax())


# --------------------------------------------------------------------------------------------- in batches
def test_seeded_row_alone_equals_inside_a_mixed_batch(gen, calls):
    target = dict(question=_question(2), seed=1234, temperature=1.0, top_p=0.9)
    alone = _row(gen, **target)
    gen.generate([alone])
    assert len(calls) == 1 and calls[0][0] == 1
    alone_tokens = calls[0][1][0]

    mates = [
        _row(gen, _question(i), seed=1000 + i, temperature=(0.6, 1.0, 1.5)[i % 3], top_p=(1.0, 0.95, 0.8)[i % 3],
             max_tokens=(24, 7, 30)[i % 3], system=None if i % 4 == 0 else "detailed thinking " + "on " * i)
        for i in range(9)
    ]
    mates.insert(4, _row(gen, target["question"], seed=99, temperature=1.0, top_p=0.9))  # same prompt, other seed
    batch = mates[:3] + [_row(gen, **target)] + mates[3:]
    assert len({len(r.prompt_ids) for r in batch}) >= 5  # really padded
    calls.clear()
    gen.generate(batch)
    # one generate for all 11 rows, seeded, with different temperatures / top_p / max_tokens
    assert len(calls) == 1 and calls[0][0] == len(batch), [c[0] for c in calls]
    inside = batch[3]
    assert _result(inside) == _result(alone)
    assert calls[0][1][3][: alone.completion_tokens] == alone_tokens[: alone.completion_tokens]
    # max_tokens and finish_reason per row, though the batch ran to the longest
    for r in batch:
        assert r.finish_reason in ("stop", "length")
        assert 1 <= r.completion_tokens <= r.max_tokens
        if r.finish_reason == "length":
            assert r.completion_tokens == r.max_tokens
    # the batch mates too: each one alone gives what it gave in the batch (short max_tokens included)
    for i in (0, 1, 2, 4, 7):
        solo = _row(gen, _question(i), seed=1000 + i, temperature=(0.6, 1.0, 1.5)[i % 3],
                    top_p=(1.0, 0.95, 0.8)[i % 3], max_tokens=(24, 7, 30)[i % 3],
                    system=None if i % 4 == 0 else "detailed thinking " + "on " * i)
        gen.generate([solo])
        assert _result(solo) == _result(mates[i if i < 4 else i + 1]), i


def test_short_max_tokens_is_a_prefix_of_the_long_answer(gen, calls):
    """A row's random stream is one draw per token of its own: stopping early changes nothing before."""
    long = _row(gen, _question(3), seed=7, temperature=1.2, top_p=0.95, max_tokens=20)
    short = _row(gen, _question(3), seed=7, temperature=1.2, top_p=0.95, max_tokens=5)
    gen.generate([long, short, _row(gen, _question(1), seed=8)])
    assert len(calls) == 1
    long_toks, short_toks = calls[0][1][0], calls[0][1][1]
    assert short.completion_tokens == min(5, long.completion_tokens)
    assert short_toks[: short.completion_tokens] == long_toks[: short.completion_tokens]


def test_different_seeds_differ_and_same_seed_repeats(gen):
    rows = [_row(gen, _question(i), seed=s, temperature=1.0, top_p=0.95) for i in range(4) for s in (1, 2)]
    gen.generate(rows)
    pairs = [(rows[2 * i].text, rows[2 * i + 1].text) for i in range(4)]
    assert any(a != b for a, b in pairs), pairs
    again = [_row(gen, _question(i), seed=s, temperature=1.0, top_p=0.95) for i in range(4) for s in (1, 2)]
    gen.generate(again[::-1])  # other order, other batch positions
    assert [_result(r) for r in again] == [_result(r) for r in rows]


def test_unseeded_sampling_and_greedy(gen, calls):
    import torch

    greedy_alone = _row(gen, _question(1), temperature=0, max_tokens=16)
    gen.generate([greedy_alone])
    # greedy equals plain HF greedy decoding of the same prompt
    ids = torch.tensor([greedy_alone.prompt_ids])
    with torch.inference_mode():
        out = gen.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                 do_sample=False, eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id)
    new = out[0, ids.shape[1]:].tolist()
    cut = next((k for k, t in enumerate(new) if t in gen.stop_ids), None)
    body = new if cut is None else new[:cut]
    assert greedy_alone.text == gen.tokenizer.decode(body, skip_special_tokens=True)
    assert greedy_alone.completion_tokens == (len(new) if cut is None else cut + 1)

    calls.clear()
    unseeded = [_row(gen, _question(i), temperature=1.0, top_p=(1.0, 0.9)[i % 2]) for i in range(4)]
    seeded = _row(gen, _question(5), seed=5, temperature=0.8)
    greedy_in = _row(gen, _question(1), temperature=0, max_tokens=16)
    gen.generate([unseeded[0], greedy_in, seeded, *unseeded[1:]])
    assert sorted(c[0] for c in calls) == [1, 5]  # one greedy batch, one sampled batch
    assert _result(greedy_in) == _result(greedy_alone)
    for r in unseeded:
        assert r.text and r.finish_reason in ("stop", "length") and 1 <= r.completion_tokens <= r.max_tokens
    # unseeded rows are random: the same four rows again give other answers
    more = [_row(gen, _question(i), temperature=1.0, top_p=(1.0, 0.9)[i % 2]) for i in range(4)]
    gen.generate(more)
    assert [r.text for r in more] != [r.text for r in unseeded]
    # ... and do not disturb the seeded row
    seeded_alone = _row(gen, _question(5), seed=5, temperature=0.8)
    gen.generate([seeded_alone])
    assert _result(seeded_alone) == _result(seeded)
