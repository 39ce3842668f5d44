"""Answer-letter extraction from a chat completion's message text.

``robust`` (default), in order:

1. The think block is removed: everything up to the last ``</think>`` is thinking. A ``<think>``
   that is never closed means the whole reply is thinking (it ran out of tokens): no answer.
2. Rules, in priority order; the first rule that matches anywhere wins and, when it matches
   several times, its LAST match is taken:

   * ``final_answer`` -- ``The final answer is X`` (case-insensitive phrase; tolerant of ``:``,
     ``**bold**``, ``(X)``, ``[X]``, ``$\\boxed{X}$``, ``Option X``);
   * ``answer_colon`` -- ``Answer: X`` (also ``**Answer:** (C)``, ``Final answer: C``);
   * ``boxed`` -- ``\\boxed{X}`` (also ``\\boxed{\\text{X}}``, ``\\boxed{(X)}``).

   An upper-case letter must not run into a following letter/digit (``Answer: Alright`` is not
   A); a lower-case letter is accepted only when it stands alone (followed by the end, space +
   end, or punctuation), so ``the final answer is a prime`` is not an answer.
3. No match -> no answer (``letter`` is ``None``), counted apart from a wrong answer.

``reference`` reproduces the reference's scorer for comparison: the first match of the
case-sensitive regex ``The final answer is ([A-D])`` anywhere in the text, think block included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RULES = ("final_answer", "answer_colon", "boxed")

# What may sit between the phrase and the letter: spaces, colons, bold/italic markers, brackets,
# math delimiters, \boxed{ / \text{ / \mathrm{, and the words "option"/"choice".
_DECOR = r"(?:\s|[:：*_\"'`$(\[{]|\\\(|\\\[|\\boxed\s*\{|\\text(?:bf)?\s*\{|\\mathrm\s*\{|\\mathbf\s*\{|(?:option|choice)\b)*"
_LETTER = r"(?P<letter>[A-Da-d])"
# Upper case: not followed by a letter/digit. Lower case additionally must stand alone.
_AFTER = r"(?![A-Za-z0-9])"
_LOWER_OK = re.compile(r"\s*(?:$|[.,;:!?)\]}*_$\"'`\\])")

_PATTERNS = {
    "final_answer": re.compile(r"the\s+final\s+answer\s+is\s*" + _DECOR + _LETTER + _AFTER, re.I),
    "answer_colon": re.compile(r"(?<![A-Za-z])answer\s*(?:\*\*|__)?\s*[:：]" + _DECOR + _LETTER + _AFTER, re.I),
    "boxed": re.compile(
        r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{|\\mathrm\s*\{)?\s*\(?\s*" + _LETTER + r"\s*\)?\s*\.?\s*\}", re.I
    ),
}
_REFERENCE = re.compile(r"The final answer is ([A-D])")


@dataclass(frozen=True)
class Extraction:
    letter: str | None  # "A".."D" or None (no answer)
    rule: str | None  # which rule matched, None when none did
    think: str  # "none" (no think block), "closed", "unclosed" (reply is all thinking)


def strip_think(text: str) -> tuple[str | None, str]:
    """The reply after its think block (``None`` if it never leaves it) and the block's state."""
    close = text.rfind("</think>")
    if close >= 0:
        return text[close + len("</think>") :], "closed"
    if "<think>" in text:
        return None, "unclosed"
    return text, "none"


def _valid(m: re.Match, text: str) -> bool:
    letter = m.group("letter")
    return letter.isupper() or bool(_LOWER_OK.match(text, m.end()))


def extract(text: str | None, mode: str = "robust") -> Extraction:
    """The answer letter in ``text`` and the rule that found it (see the module docstring)."""
    if mode == "reference":
        m = _REFERENCE.search(text or "")
        return Extraction(m.group(1) if m else None, "reference" if m else None, "none")
    if mode != "robust":
        raise ValueError(f"extraction mode must be 'robust' or 'reference', got {mode!r}")
    if not text:
        return Extraction(None, None, "none")
    answer, think = strip_think(text)
    if answer is None:
        return Extraction(None, None, think)
    for rule in RULES:
        matches = [m for m in _PATTERNS[rule].finditer(answer) if _valid(m, answer)]
        if matches:
            return Extraction(matches[-1].group("letter").upper(), rule, think)
    return Extraction(None, None, think)
