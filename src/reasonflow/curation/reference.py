"""A faithful re-implementation of the reference tutorial's per-row curation work.

It mirrors NVIDIA's ``llama-nemotron-data-curation`` tutorial (Ray version) on a
pandas DataFrame of parsed rows, with the same per-row work and the same quirks:

- two passes over the data (reasoning on / off pipelines), each running the
  heuristic filters with ``DataFrame.apply``-style row loops;
- the ``\\boxed`` test applied to the list-typed ``input`` column (never drops);
- the chat template rendered per row by the language filter, the token-count
  filter, the completion-count filter (answer alone, which adds a system header)
  and twice more by the formatting step;
- the full templated conversation tokenized *with* special tokens (BOS twice) and
  the templated answer tokenized again;
- fastText on the full templated conversation with newlines replaced by spaces.

It exists for the speed benchmark and for checking that our pipeline keeps the
same rows apart from the documented fixes (RECIPE.md section 6).
"""

from __future__ import annotations

import pandas as pd

from reasonflow import chat
from reasonflow.langid import LanguageIdentifier  # noqa: TC001 (type of an argument)

EMPTY_THINK = ("<think>\n\n</think>", "<think>\n</think>", "<think></think>")


def _heuristics(df: pd.DataFrame, thinking_on: bool) -> pd.DataFrame:
    df = df[df["reasoning"].apply(lambda t: ("on" in t.lower()) == thinking_on)]
    df = df[df["used_in_training"].apply(lambda t: "nano" in t.lower())]
    df = df[df["output"].apply(lambda t: not any(v in t for v in EMPTY_THINK))]
    # malformed_filter: str.contains on a list column yields NaN -> na=False -> never drops
    malformed = df["input"].astype(object).map(lambda v: isinstance(v, str) and "\\boxed" in v) & ~df[
        "output"
    ].str.contains(r"\\boxed", na=False)
    df = df[~malformed]
    df = df[df["output"].apply(lambda t: not ("<think>" in t and "</think>" not in t))]
    if thinking_on:
        return df[df["output"].apply(lambda t: not ("<think>" not in t or "</think>" not in t))]
    return df[df["output"].apply(lambda t: not ("<think>" in t or "</think>" in t))]


def _full_template(tok, row) -> str:
    return tok.apply_chat_template(
        chat.conversation(row["system_prompt"], list(row["input"]), row["output"]),
        tokenize=False,
        add_generation_prompt=False,
    )


def _model_filters(df: pd.DataFrame, tok, lid: LanguageIdentifier, max_tokens: int, max_completion: int):
    if df.empty:
        return df.assign(completion_token_count=pd.Series(dtype="int64"))
    # NonEnglishFilter: template per row, fastText on one line
    english = df.apply(
        lambda row: lid.predict([str(_full_template(tok, row)).replace("\n", " ").strip()])[0][0] == "__label__en",
        axis=1,
    )
    df = df[english]
    if df.empty:
        return df.assign(completion_token_count=pd.Series(dtype="int64"))
    # TokenCountFilter: template again, tokenize with special tokens
    templates = df.apply(lambda row: _full_template(tok, row), axis=1).tolist()
    counts = pd.Series([len(ids) for ids in tok(templates)["input_ids"]], index=df.index)
    df = df[(counts > 0) & (counts <= max_tokens)]
    if df.empty:
        return df.assign(completion_token_count=pd.Series(dtype="int64"))
    # CompletionTokenCountFilter: the answer templated alone, tokenized again
    completions = df["output"].apply(
        lambda text: tok.apply_chat_template(
            [{"role": "assistant", "content": text}], tokenize=False, add_generation_prompt=False
        )
    )
    ccounts = pd.Series([len(ids) for ids in tok(completions.tolist())["input_ids"]], index=df.index)
    df = df.assign(completion_token_count=ccounts)
    df = df[(ccounts > 0) & (ccounts <= max_completion)]
    if df.empty:
        return df
    # ApplyChatTemplate: full conversation and prompt rendered once more each

    def fmt(row):
        full = _full_template(tok, row)
        prompt = tok.apply_chat_template(
            chat.conversation(row["system_prompt"], list(row["input"])), tokenize=False, add_generation_prompt=True
        )
        return prompt, full[len(prompt) :]

    pairs = df.apply(fmt, axis=1).tolist()
    return df.assign(input=[p for p, _ in pairs], output=[c for _, c in pairs])


def reference_curate(
    df: pd.DataFrame, tok, lid: LanguageIdentifier, max_tokens: int = 16384, max_completion: int = 8192
) -> pd.DataFrame:
    """Rows the reference keeps, with its ``input``/``output``/``completion_token_count``."""
    parts = [
        _model_filters(_heuristics(df, on), tok, lid, max_tokens, max_completion) for on in (True, False)
    ]
    return pd.concat(parts)
