"""Model/tokenizer locations: local directories or Hugging Face hub ids fetched once.

The HF token is read from the environment (``HF_TOKEN``) at download time only;
it is never written to configs, params, logs or results.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def env_token_var() -> str | None:
    """Which variable holds the HF token (``HF_TOKEN``, else ``HUGGING_FACE_HUB_TOKEN``), or None."""
    return next((v for v in TOKEN_VARS if os.environ.get(v)), None)


def env_token() -> str | None:
    """The HF token from the environment (see :func:`env_token_var`), or None."""
    var = env_token_var()
    return os.environ[var] if var else None


def is_local(name_or_path: str) -> bool:
    """A path (existing, or written like one) rather than a hub id ``org/name``."""
    if os.path.isdir(name_or_path) or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return True
    if _HUB_ID.match(name_or_path):
        return False
    raise ValueError(
        f"model {name_or_path!r} is neither an existing directory nor a hub id like 'org/name'"
    )


def local_dir(root: str, repo_id: str) -> str:
    return str(Path(root) / repo_id.replace("/", "--"))


def repo_id_from_dirname(dirname: str) -> str:
    return dirname.replace("--", "/", 1)


def download(repo_id: str, revision: str, out_dir: str) -> str:
    """Snapshot a hub repo (weights as safetensors, tokenizer, configs) into ``out_dir``."""
    from huggingface_hub import snapshot_download

    token = env_token()
    return snapshot_download(
        repo_id=repo_id,
        revision=revision,
        local_dir=out_dir,
        token=token,
        allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.model", "*.txt"],
        ignore_patterns=["original/*"],
    )
