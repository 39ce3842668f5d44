"""Triton + the OpenAI front end as one context manager (what the evaluation rule uses)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from reasonflow.serve.openai_api import OpenAIServer
from reasonflow.serve.repository import read_serving_info
from reasonflow.serve.triton import TritonServer

log = logging.getLogger(__name__)


class Endpoint(str):
    """The OpenAI base URL (a plain ``str``) that also tells where things are: ``triton_url``,
    ``triton_model``, ``model_ids``, ``triton_pid``, ``log_dir``."""

    triton_url: str
    triton_model: str
    model_ids: dict
    triton_pid: int
    log_dir: Path


@contextlib.contextmanager
def serving(repo_dir, log_dir, *, triton_model: str | None = None, model_ids: dict[str, str] | None = None,
            host: str = "127.0.0.1", port: int = 0, request_timeout: float = 3600.0,
            **triton_kwargs) -> Iterator[Endpoint]:
    """Start Triton on ``repo_dir`` (a repository from ``write_triton_repo``) and the OpenAI front
    end; yield the front end's base URL (an :class:`Endpoint`) (``http://127.0.0.1:<port>/v1``, what ``openai.OpenAI``
    takes as ``base_url``). Both stop on exit, also on exceptions.

    Logs: ``<log_dir>/tritonserver.log`` (server + backend) and ``<log_dir>/openai_api.log``
    (access log). ``model_ids`` (OpenAI id -> served name) defaults to the repository's
    ``serving.json``; ``triton_kwargs`` go to :class:`TritonServer` (``launcher``, ``image``,
    ``serve_venv``, ``ready_timeout``, ...).
    """
    info = read_serving_info(repo_dir, triton_model)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with TritonServer(repo_dir, log_dir / "tritonserver.log", host=host, **triton_kwargs) as triton, \
            OpenAIServer(triton.url, info["triton_model"], model_ids or info["model_ids"], host=host, port=port,
                         timeout=request_timeout, access_log=log_dir / "openai_api.log",
                         engine=info.get("engine", "hf")) as api:
        log.info("serving %s at %s", sorted(api.model_ids), api.base_url)
        url = Endpoint(api.base_url)
        url.triton_url, url.triton_model, url.model_ids = triton.url, info["triton_model"], dict(api.model_ids)
        url.triton_pid, url.log_dir = triton.proc.pid, log_dir
        yield url
