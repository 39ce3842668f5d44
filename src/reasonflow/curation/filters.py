"""Row-level curation rules of RECIPE.md section 2, as pure functions.

Each ``*_reason`` function returns ``None`` when the row is kept and a short,
human-readable reason when it is dropped. The Curator stages in
:mod:`reasonflow.curation.stages` apply them in :data:`FILTER_ORDER`.
"""

from __future__ import annotations

FILTER_ORDER = ("nano", "empty_think", "boxed", "think_tags", "language", "token_limits")
EMPTY_THINK = ("<think></think>", "<think>\n</think>", "<think>\n\n</think>")
BOXED = "\\boxed"
BOXED_MODES = ("intent", "reference")
TOKEN_COUNT_MODES = ("exact", "reference")


def nano_reason(used_in_training: str) -> str | None:
    return None if "nano" in used_in_training.lower() else f"used_in_training={used_in_training!r}"


def empty_think_reason(output: str) -> str | None:
    for variant in EMPTY_THINK:
        if variant in output:
            return f"contains {variant!r}"
    return None


def prompt_text(messages: list[dict]) -> str:
    """The concatenated ``content`` of a row's input messages (what the boxed rule inspects)."""
    return "".join(m["content"] for m in messages)


def boxed_reason(messages: list[dict], output: str, mode: str) -> str | None:
    """Drop rows whose prompt asks for ``\\boxed`` while the answer has none.

    ``mode="reference"`` reproduces the reference code, whose test runs on the
    list-typed ``input`` column and so never drops anything.
    """
    if mode == "reference":
        return None
    if mode != "intent":
        raise ValueError(f"boxed mode must be one of {BOXED_MODES}, got {mode!r}")
    if BOXED in prompt_text(messages) and BOXED not in output:
        return "prompt asks for \\boxed, output has none"
    return None


def think_tags_reason(output: str, reasoning: str) -> str | None:
    has_open, has_close = "<think>" in output, "</think>" in output
    if has_open and not has_close:
        return "unclosed <think>"
    if reasoning == "off" and (has_open or has_close):
        return "reasoning off but output has think tags"
    if reasoning == "on" and not (has_open and has_close):
        return "reasoning on but output lacks <think> or </think>"
    return None


def language_text(conversation: str) -> str:
    """What fastText scores: the templated conversation on one line (as the reference does)."""
    return conversation.replace("\n", " ").strip()


def language_reason(label: str, prob: float, want: str, min_prob: float) -> str | None:
    if label != want:
        return f"{label} p={prob:.3f}"
    if prob < min_prob:
        return f"{label} p={prob:.3f}<{min_prob}"
    return None


def token_limits_reason(total: int, completion: int, max_total: int, max_completion: int) -> str | None:
    if total <= 0 or completion <= 0:
        return f"empty token count (total={total}, completion={completion})"
    if total > max_total:
        return f"token_count={total}>{max_total}"
    if completion > max_completion:
        return f"completion_token_count={completion}>{max_completion}"
    return None
