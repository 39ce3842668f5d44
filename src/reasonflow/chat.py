"""Chat templating and exact token counting with the target model's tokenizer.

The training stage tokenizes the formatted ``input`` (prompt incl. generation
prompt) and ``output`` (answer + end-of-turn) separately and concatenates the
ids, so the exact sequence length the trainer sees is
``len(ids(input)) + len(ids(output))`` with no special tokens added (the
template already starts with BOS). Curation counts exactly that.
"""

from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """Load a tokenizer from a local directory (or the hub, with ``HF_TOKEN`` from the environment)."""
    from transformers import AutoTokenizer

    local = os.path.isdir(name_or_path)
    return AutoTokenizer.from_pretrained(
        name_or_path,
        local_files_only=local,
        token=None if local else os.environ.get("HF_TOKEN"),
    )


def conversation(system_prompt: str, messages: list[dict], answer: str | None = None) -> list[dict]:
    conv = [{"role": "system", "content": system_prompt}, *messages]
    if answer is not None:
        conv.append({"role": "assistant", "content": answer})
    return conv


def render(tokenizer, system_prompt: str, messages: list[dict], answer: str) -> tuple[str, str]:
    """Return ``(prompt, completion)``: the templated prompt with the generation prompt
    appended, and the rest of the templated full conversation (answer + end-of-turn)."""
    prompt = tokenizer.apply_chat_template(
        conversation(system_prompt, messages), tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(
        conversation(system_prompt, messages, answer), tokenize=False, add_generation_prompt=False
    )
    if not full.startswith(prompt):
        raise ValueError(
            "chat template is not prefix-stable: the templated conversation does not start with "
            "the templated prompt + generation prompt, so input/output cannot be split"
        )
    return prompt, full[len(prompt) :]


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of ``texts`` without added special tokens (batched in the Rust backend)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [len(enc) for enc in backend.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def max_token_bytes(tokenizer) -> int | None:
    """Most UTF-8 bytes any single token (special tokens included) stands for, or ``None``
    when the tokenizer normalizes text (then byte length gives no bound on token count)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return None
    vocab = backend.get_vocab(with_added_tokens=True)
    return max(len(tokenizer.convert_tokens_to_string([t]).encode("utf-8")) for t in vocab)


def token_lower_bound(text: str, max_bytes: int) -> int:
    """Every token covers at most ``max_bytes`` bytes, so a text needs at least this many tokens."""
    return -(-len(text.encode("utf-8")) // max_bytes)


def reference_token_counts(tokenizer, system_prompt: str, messages: list[dict], answer: str) -> tuple[int, int]:
    """The reference tutorial's counts: the templated conversation tokenized *with* special
    tokens (BOS twice), and the answer templated alone (which adds a system header)."""
    full = tokenizer.apply_chat_template(
        conversation(system_prompt, messages, answer), tokenize=False, add_generation_prompt=False
    )
    completion = tokenizer.apply_chat_template(
        [{"role": "assistant", "content": answer}], tokenize=False, add_generation_prompt=False
    )
    ids = tokenizer([full, completion])["input_ids"]
    return len(ids[0]), len(ids[1])
