"""Row validation and the pure filter rules (no Curator, no Ray)."""

import json

import pytest

from reasonflow.curation import filters as F
from reasonflow.schema import Rejected, parse_record

GOOD = {
    "input": [{"role": "user", "content": "hi"}],
    "output": "hello",
    "reasoning": "off",
    "system_prompt": "detailed thinking off",
    "used_in_training": "Ultra, Super, Nano",
    "category": "chat",
}


def _line(**changes):
    rec = {**GOOD, **changes}
    return json.dumps({k: v for k, v in rec.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "line, category",
    [
        (b"   ", "blank_line"),
        (b'{"output": "\xff"}', "invalid_utf8"),
        (b'{"input": [', "bad_json"),
        (b"[1, 2]", "not_object"),
        (_line(output=...), "missing_field"),
        (_line(used_in_training=["Nano"]), "wrong_type"),
        (_line(reasoning="ON"), "wrong_type"),
        (_line(input="hi"), "wrong_type"),
        (_line(input=[]), "bad_messages"),
        (_line(input=[{"role": "assistant", "content": "x"}]), "bad_messages"),
        (_line(input=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), "bad_messages"),
        (_line(input=[{"role": "user", "content": 3}]), "bad_messages"),
    ],
)
def test_rejects_name_their_category(line, category):
    with pytest.raises(Rejected) as err:
        parse_record(line)
    assert err.value.category == category
    assert str(err.value).startswith(category + ": ")


def test_valid_multi_turn_record_parses():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert parse_record(_line(input=msgs))["input"] == msgs


def test_filter_rules():
    assert F.nano_reason("ultra, NANO") is None and F.nano_reason("Ultra, Super")
    for variant in F.EMPTY_THINK:
        assert F.empty_think_reason(f"x{variant}y")
    assert F.empty_think_reason("<think>\nhm\n</think>\n\nok") is None
    msgs = [{"role": "user", "content": "Put the answer in \\boxed{}."}]
    assert F.boxed_reason(msgs, "42", "intent") and F.boxed_reason(msgs, "\\boxed{42}", "intent") is None
    assert F.boxed_reason(msgs, "42", "reference") is None  # the reference never drops
    assert F.think_tags_reason("<think>\nhm", "on") == "unclosed <think>"
    assert F.think_tags_reason("<think>\nhm\n</think>ok", "off")
    assert F.think_tags_reason("just an answer", "on")
    assert F.think_tags_reason("<think>\nhm\n</think>ok", "on") is None
    assert F.language_reason("__label__de", 0.9, "__label__en", 0.0) == "__label__de p=0.900"
    assert F.language_reason("__label__en", 0.4, "__label__en", 0.5)
    assert F.token_limits_reason(10, 5, 10, 5) is None
    assert F.token_limits_reason(11, 5, 10, 5) == "token_count=11>10"
    assert F.token_limits_reason(10, 6, 10, 5) == "completion_token_count=6>5"
    with pytest.raises(ValueError, match="boxed mode must be one of"):
        F.boxed_reason(msgs, "", "sometimes")
