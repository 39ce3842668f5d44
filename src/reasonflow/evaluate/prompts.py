"""Prompt templates for the multiple-choice benchmarks and the reasoning-mode system prompts.

``reference`` follows the reference recipe's structure (question and four options A-D, a direct
answer for simple problems, step-by-step work for complex ones, always ending with
``The final answer is [letter]``); the wording is this project's. Other ids are alternatives
for ablations; add one by registering a function in :data:`PROMPTS`.
"""

from __future__ import annotations

from collections.abc import Callable

LETTERS = "ABCD"
SYSTEM_PROMPTS = {"on": "detailed thinking on", "off": "detailed thinking off"}


def _options(choices: list[str], sep: str = "\n") -> str:
    return sep.join(f"{L}. {c}" for L, c in zip(LETTERS, choices, strict=True))


def reference(question: str, choices: list[str]) -> str:
    return (
        "Choose the best answer to the following question from the four candidates A, B, C and D.\n\n"
        f"Question: {question}\n\n{_options(choices)}\n\n"
        "If the problem is simple, give the answer directly with little or no explanation. If it is "
        "complex, work through it step by step. Whatever the case, end your reply with the sentence "
        '"The final answer is [letter]", where [letter] is A, B, C or D.'
    )


def reference_inline(question: str, choices: list[str]) -> str:
    """Like ``reference`` but with the options on the question's line, as the reference lays them out."""
    return (
        "Choose the best answer to the following question from the four candidates A, B, C and D. "
        f"Question: {question} {_options(choices, sep=' ')} "
        "If the problem is simple, give the answer directly with little or no explanation. If it is "
        "complex, work through it step by step. Whatever the case, end your reply with the sentence "
        '"The final answer is [letter]", where [letter] is A, B, C or D.'
    )


def boxed(question: str, choices: list[str]) -> str:
    return (
        f"{question}\n\n{_options(choices)}\n\n"
        "Think about the question, then put the letter of the correct option (A, B, C or D) in "
        "\\boxed{} at the end of your reply."
    )


PROMPTS: dict[str, Callable[[str, list[str]], str]] = {
    "reference": reference,
    "reference_inline": reference_inline,
    "boxed": boxed,
}


def render(prompt_id: str, item: dict) -> str:
    try:
        fn = PROMPTS[prompt_id]
    except KeyError:
        raise ValueError(f"unknown prompt id {prompt_id!r}; known: {sorted(PROMPTS)}") from None
    return fn(item["question"], item["choices"])


def messages(item: dict, mode: str, prompt_id: str = "reference") -> list[dict]:
    """Chat messages for one item: the reasoning-mode system prompt, then the question."""
    if mode not in SYSTEM_PROMPTS:
        raise ValueError(f"mode must be 'on' or 'off', got {mode!r}")
    return [
        {"role": "system", "content": SYSTEM_PROMPTS[mode]},
        {"role": "user", "content": render(prompt_id, item)},
    ]
