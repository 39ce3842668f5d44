"""Serving: Triton model repositories, a real Triton server, and an OpenAI-compatible front end.

- :func:`write_triton_repo` / :func:`write_vllm_repo` (``repository``): the model repositories;
- :class:`TritonServer` (``triton``): ``tritonserver`` from the serving venv (or apptainer);
- :class:`OpenAIServer` (``openai_api``): ``/v1/chat/completions`` and ``/v1/models`` over Triton;
- :func:`serving` (``service``): both at once, yields the OpenAI base URL.

``python -m reasonflow.serve REPO --log-dir DIR`` serves interactively until Ctrl-C.
"""

from reasonflow.serve.openai_api import OpenAIServer
from reasonflow.serve.repository import read_serving_info, write_triton_repo, write_vllm_repo
from reasonflow.serve.service import serving
from reasonflow.serve.triton import TritonServer

__all__ = ["OpenAIServer", "TritonServer", "read_serving_info", "serving", "write_triton_repo", "write_vllm_repo"]
