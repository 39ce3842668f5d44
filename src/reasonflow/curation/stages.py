"""NeMo Curator 1.x stages implementing RECIPE.md section 2 for one shard.

Pipeline: :class:`ReadShardStage` (FileGroupTask -> DocumentBatch chunks, with
malformed lines recorded as rejects) -> one stage per filter in
:data:`~reasonflow.curation.filters.FILTER_ORDER` (the chat template is rendered
once, by :class:`ChatTemplateStage`, right before the first filter that needs it)
-> :class:`FormatStage`.

Every stage keeps the books in the task metadata: ``funnel`` (rows dropped per
filter), ``dropped`` (``[id, filter, reason]`` per dropped row) and ``rejects``,
so the driver can prove ``rows_in == kept + sum(dropped) + rejected``.
"""

from __future__ import annotations

import base64
from abc import abstractmethod
from typing import Any

import pandas as pd
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import DocumentBatch, FileGroupTask

from reasonflow import chat
from reasonflow.curation import filters as F
from reasonflow.langid import LanguageIdentifier
from reasonflow.schema import Rejected, parse_record
from reasonflow.split import ShardInfo, iter_lines_with_offsets

ROW_COLUMNS = ("id", "category", "reasoning", "system_prompt", "used_in_training", "input", "output")
KEPT_COLUMNS = ("id", "category", "reasoning", "input", "output", "token_count", "completion_token_count")


def _reject_record(row_id: str, line: bytes, exc: Rejected) -> dict[str, Any]:
    rec = {"id": row_id, "reason": str(exc), "raw": line.decode("utf-8", "backslashreplace")}
    if exc.category == "invalid_utf8":
        rec["raw_base64"] = base64.b64encode(line).decode("ascii")
    return rec


def _batch(parent: DocumentBatch, df: pd.DataFrame, metadata: dict) -> DocumentBatch:
    return DocumentBatch(
        dataset_name=parent.dataset_name, data=df, _metadata=metadata, _stage_perf=parent._stage_perf
    )


class ReadShardStage(ProcessingStage[FileGroupTask, DocumentBatch]):
    """Parse a shard (``[shard.jsonl, shard.json]``) into validated rows, ``chunk_rows`` lines a batch."""

    name = "read_shard"

    def __init__(self, chunk_rows: int = 1000):
        self.chunk_rows = chunk_rows

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], list(ROW_COLUMNS)

    def process(self, task: FileGroupTask) -> list[DocumentBatch]:
        shard_path, info_path = task.data
        info = ShardInfo.read(info_path)
        batches, rows, rejects, lines = [], [], [], 0

        def flush() -> None:
            meta = {"chunk": len(batches), "rows_in": lines, "rejects": list(rejects), "funnel": {}, "dropped": []}
            df = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
            batches.append(DocumentBatch(dataset_name=info.source, data=df, _metadata=meta))

        for offset, line in iter_lines_with_offsets(shard_path, info.first_offset):
            row_id = f"{info.source}@{offset}"
            lines += 1
            try:
                rec = parse_record(line)
            except Rejected as exc:
                rejects.append(_reject_record(row_id, line, exc))
            else:
                rows.append(
                    (
                        row_id,
                        rec.get("category", "unknown"),
                        rec["reasoning"],
                        rec["system_prompt"],
                        rec["used_in_training"],
                        rec["input"],
                        rec["output"],
                    )
                )
            if lines == self.chunk_rows:
                flush()
                rows, rejects, lines = [], [], 0
        if lines or not batches:
            flush()
        return batches


class _FilterStage(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Drop rows for which :meth:`reasons` gives a reason; book them under ``self.name``."""

    name = "filter"
    columns: tuple[str, ...] = ()

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], list(self.columns)

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    @abstractmethod
    def reasons(self, df: pd.DataFrame) -> list[str | None]:
        """One entry per row: ``None`` to keep it, else why it is dropped."""

    def annotate(self, df: pd.DataFrame) -> pd.DataFrame:
        """Hook for stages that add columns (e.g. token counts) before dropping."""
        return df

    def process(self, batch: DocumentBatch) -> DocumentBatch:
        df = self.annotate(batch.to_pandas())
        reasons = self.reasons(df) if len(df) else []
        drop = [r is not None for r in reasons]
        meta = dict(batch._metadata)
        meta["funnel"] = {**meta.get("funnel", {}), self.name: sum(drop)}
        meta["dropped"] = list(meta.get("dropped", [])) + [
            [row_id, self.name, reason] for row_id, reason in zip(df["id"], reasons, strict=True) if reason
        ]
        keep = [not d for d in drop]
        return _batch(batch, df[keep].reset_index(drop=True) if len(df) else df, meta)


class NanoFilterStage(_FilterStage):
    name = "nano"
    columns = ("used_in_training",)

    def reasons(self, df):
        return [F.nano_reason(v) for v in df["used_in_training"]]


class EmptyThinkFilterStage(_FilterStage):
    name = "empty_think"
    columns = ("output",)

    def reasons(self, df):
        return [F.empty_think_reason(v) for v in df["output"]]


class BoxedFilterStage(_FilterStage):
    name = "boxed"
    columns = ("input", "output")

    def __init__(self, mode: str = "intent"):
        if mode not in F.BOXED_MODES:
            raise ValueError(f"curation.boxed_mode must be one of {F.BOXED_MODES}, got {mode!r}")
        self.mode = mode

    def reasons(self, df):
        return [F.boxed_reason(m, o, self.mode) for m, o in zip(df["input"], df["output"], strict=True)]


class ThinkTagsFilterStage(_FilterStage):
    name = "think_tags"
    columns = ("output", "reasoning")

    def reasons(self, df):
        return [F.think_tags_reason(o, r) for o, r in zip(df["output"], df["reasoning"], strict=True)]


class ChatTemplateStage(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Render each surviving row's chat template once: ``_prompt`` and ``_completion``."""

    name = "chat_template"

    def __init__(self, tokenizer: str):
        self.tokenizer_name = tokenizer

    def inputs(self):
        return ["data"], ["system_prompt", "input", "output"]

    def outputs(self):
        return ["data"], ["_prompt", "_completion"]

    def setup(self, worker_metadata=None) -> None:
        self.tokenizer = chat.load_tokenizer(self.tokenizer_name)

    def process(self, batch: DocumentBatch) -> DocumentBatch:
        df = batch.to_pandas().copy()
        pairs = [
            chat.render(self.tokenizer, s, m, o)
            for s, m, o in zip(df["system_prompt"], df["input"], df["output"], strict=True)
        ]
        df["_prompt"] = [p for p, _ in pairs]
        df["_completion"] = [c for _, c in pairs]
        return _batch(batch, df, dict(batch._metadata))


class LanguageFilterStage(_FilterStage):
    """fastText top-1 language of the whole templated conversation on one line."""

    name = "language"
    columns = ("_prompt", "_completion")

    def __init__(self, model_path: str, label: str = "__label__en", min_prob: float = 0.0):
        self.model_path, self.label, self.min_prob = model_path, label, min_prob

    def setup(self, worker_metadata=None) -> None:
        self.lid = LanguageIdentifier(self.model_path)

    def reasons(self, df):
        texts = [F.language_text(p + c) for p, c in zip(df["_prompt"], df["_completion"], strict=True)]
        return [F.language_reason(lab, p, self.label, self.min_prob) for lab, p in self.lid.predict(texts)]


class TokenLimitsFilterStage(_FilterStage):
    """Exact prompt/completion token counts (or the reference's, selectable) and the length limits."""

    name = "token_limits"
    columns = ("_prompt", "_completion")

    def __init__(self, tokenizer: str, max_tokens: int, max_completion_tokens: int, mode: str = "exact"):
        if mode not in F.TOKEN_COUNT_MODES:
            raise ValueError(f"curation.token_count_mode must be one of {F.TOKEN_COUNT_MODES}, got {mode!r}")
        self.tokenizer_name, self.mode = tokenizer, mode
        self.max_tokens, self.max_completion_tokens = max_tokens, max_completion_tokens

    def setup(self, worker_metadata=None) -> None:
        self.tokenizer = chat.load_tokenizer(self.tokenizer_name)
        self.max_token_bytes = chat.max_token_bytes(self.tokenizer) if self.mode == "exact" else None

    def _certainly_too_long(self, prompt: str, completion: str) -> tuple[int, int] | None:
        """Lower bounds from byte length when they already break a limit (exact, no tokenizing)."""
        if not self.max_token_bytes:
            return None
        c = chat.token_lower_bound(completion, self.max_token_bytes)
        t = chat.token_lower_bound(prompt, self.max_token_bytes) + c
        return (t, c) if t > self.max_tokens or c > self.max_completion_tokens else None

    def annotate(self, df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        n = len(df)
        total, completion, bound = [0] * n, [0] * n, [False] * n
        if self.mode == "exact":
            todo = []
            for i, (p, c) in enumerate(zip(df["_prompt"], df["_completion"], strict=True)):
                lb = self._certainly_too_long(p, c)
                if lb is None:
                    todo.append(i)
                else:
                    total[i], completion[i], bound[i] = lb[0], lb[1], True
            lengths = chat.token_lengths(
                self.tokenizer, [df["_prompt"].iat[i] for i in todo] + [df["_completion"].iat[i] for i in todo]
            )
            for k, i in enumerate(todo):
                completion[i] = lengths[len(todo) + k]
                total[i] = lengths[k] + completion[i]
        else:
            for i, (s, m, o) in enumerate(zip(df["system_prompt"], df["input"], df["output"], strict=True)):
                total[i], completion[i] = chat.reference_token_counts(self.tokenizer, s, m, o)
        df["token_count"] = pd.Series(total, index=df.index, dtype="int64")
        df["completion_token_count"] = pd.Series(completion, index=df.index, dtype="int64")
        df["_count_is_bound"] = bound
        return df

    def reasons(self, df):
        out = []
        for t, c, b in zip(df["token_count"], df["completion_token_count"], df["_count_is_bound"], strict=True):
            reason = F.token_limits_reason(t, c, self.max_tokens, self.max_completion_tokens)
            out.append(f"{reason} (lower bound from byte length)" if reason and b else reason)
        return out


class FormatStage(ProcessingStage[DocumentBatch, DocumentBatch]):
    """``input`` = templated prompt + generation prompt; ``output`` = the rest of the conversation."""

    name = "format"

    def inputs(self):
        return ["data"], ["_prompt", "_completion", "token_count", "completion_token_count"]

    def outputs(self):
        return ["data"], list(KEPT_COLUMNS)

    def process(self, batch: DocumentBatch) -> DocumentBatch:
        df = batch.to_pandas()
        out = pd.DataFrame(
            {
                "id": df["id"],
                "category": df["category"],
                "reasoning": df["reasoning"],
                "input": df["_prompt"],
                "output": df["_completion"],
                "token_count": df["token_count"],
                "completion_token_count": df["completion_token_count"],
            },
            columns=list(KEPT_COLUMNS),
        )
        return _batch(batch, out, dict(batch._metadata))
