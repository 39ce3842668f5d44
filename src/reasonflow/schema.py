"""Validation of raw Llama-Nemotron SFT records.

A line that cannot become a valid record is *rejected* with a reason of the form
``"<category>: <detail>"``; categories are checked in the order of
:data:`REJECT_CATEGORIES`, and the first that applies is reported.
"""

from __future__ import annotations

import json
from typing import Any

REQUIRED_FIELDS = ("input", "output", "reasoning", "system_prompt", "used_in_training")
STRING_FIELDS = ("output", "system_prompt", "used_in_training")
REJECT_CATEGORIES = (
    "blank_line",
    "invalid_utf8",
    "bad_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_messages",
)


class Rejected(ValueError):
    """A raw line that is not a valid record."""

    def __init__(self, category: str, detail: str):
        assert category in REJECT_CATEGORIES, category
        super().__init__(f"{category}: {detail}")
        self.category = category


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_messages(messages: list) -> None:
    """Raise :class:`Rejected` unless ``messages`` is a user-first, alternating, user-last chat."""
    if not messages:
        raise Rejected("bad_messages", "input is an empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise Rejected("bad_messages", f"input[{i}] is {_type_name(msg)}, not an object")
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise Rejected("bad_messages", f"input[{i}] needs string 'role' and 'content'")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise Rejected("bad_messages", f"input[{i}].role is {role!r}, expected {expected!r}")
    if messages[-1]["role"] != "user":
        raise Rejected("bad_messages", "last input message is not from the user")


def parse_record(line: bytes) -> dict:
    """Decode and validate one raw line; return the record or raise :class:`Rejected`."""
    if not line.strip():
        raise Rejected("blank_line", "empty or whitespace-only line")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("invalid_utf8", f"byte {exc.start}: {exc.reason}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected("bad_json", f"{exc.msg} at char {exc.pos}") from None
    if not isinstance(record, dict):
        raise Rejected("not_object", f"top-level JSON value is {_type_name(record)}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise Rejected("missing_field", ", ".join(missing))
    for field in STRING_FIELDS:
        if not isinstance(record[field], str):
            raise Rejected("wrong_type", f"{field} is {_type_name(record[field])}, expected str")
    if record["reasoning"] not in ("on", "off"):
        raise Rejected("wrong_type", f"reasoning is {record['reasoning']!r}, expected 'on' or 'off'")
    if not isinstance(record["input"], list):
        raise Rejected("wrong_type", f"input is {_type_name(record['input'])}, expected list")
    category = record.get("category", "unknown")
    if not isinstance(category, str):
        raise Rejected("wrong_type", f"category is {_type_name(category)}, expected str")
    check_messages(record["input"])
    return record
