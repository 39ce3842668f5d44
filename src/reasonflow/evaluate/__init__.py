"""Evaluation on MMLU, GPQA Diamond and GPQA Main against an OpenAI-compatible endpoint.

* :mod:`.prep`     -- raw benchmark files -> sorted JSONL items + sha256 sidecar (byte-reproducible)
* :mod:`.prompts`  -- prompt templates (``reference`` and alternatives) and the reasoning system prompts
* :mod:`.client`   -- concurrent, retrying, resumable chat-completions client
* :mod:`.extract`  -- answer-letter extraction with the rule that matched
* :mod:`.score`    -- per-item CSV, summary, base-vs-adapter comparison, bar chart
"""

BENCHMARKS = ("mmlu", "gpqa_main", "gpqa_diamond")
MODES = ("on", "off")
