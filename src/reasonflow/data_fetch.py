"""Fetch the workflow's raw files from a Hugging Face dataset repo (the ``fetch_data`` rule).

What :func:`fetch` guarantees:

* **Selection**: exactly the repo's files whose path ends in ``.jsonl`` and contains any
  ``data.file_filter`` substring (:func:`select`), the same rule ``selected_sources()`` applies
  to a local ``data.raw_dir`` (a path in the repo is the path relative to ``raw_dir``). No other
  file of the repo is downloaded.
* **One commit**: ``revision`` (branch, tag or sha) is resolved to a commit sha once; the listing
  and every download use that sha, so all files come from one snapshot even if the branch moves
  while the download runs. The manifest records both the requested revision and the commit.
* **Integrity**: every selected file in ``raw_dir`` has the size and hash the hub lists for it
  (the LFS sha256; the git blob sha1 for a file stored in git itself). A file already there that
  matches is kept as it is (not downloaded, not touched: Snakemake sees no change); a missing or
  different one is downloaded and checked again; a download that does not match is removed and
  is an error.
* **Manifest**: repo, revision, commit, the filter, and per file its ``path`` (relative to
  ``raw_dir``), ``size`` and ``sha256`` of the bytes on disk (:func:`write_manifest` writes it as
  JSON, which the workflow plans the shards from, and as CSV for the Snakemake report).
* **Token**: read from ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` when :func:`fetch` runs (neither
  set: huggingface_hub's own stored login, if any) and handed to huggingface_hub only. It is never
  returned, printed, logged or written; the log names the variable it came from, not its value.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from reasonflow.hub import env_token, env_token_var

_CHUNK = 8 << 20


class FetchError(RuntimeError):
    """The dataset repo does not hold what the config asks for, or a file failed its check."""


def select(paths: Iterable[str], file_filter: Iterable[str]) -> list[str]:
    """Sorted ``*.jsonl`` paths containing any of the ``file_filter`` substrings."""
    subs = list(file_filter)
    return sorted(p for p in paths if p.endswith(".jsonl") and any(s in p for s in subs))


@dataclass(frozen=True)
class RemoteFile:
    """A file of the repo at one commit, with the hash the hub lists for it."""

    path: str
    size: int
    sha256: str | None  # LFS files: sha256 of the content
    blob_id: str  # git blob sha1 (of the content for files in git, of the pointer for LFS files)


def local_hashes(path: str | os.PathLike, git_sha1: bool = False) -> tuple[str, str | None]:
    """``(sha256, git blob sha1 or None)`` of a local file, in one read."""
    size = os.path.getsize(path)
    sha = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % size) if git_sha1 else None
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            if blob is not None:
                blob.update(chunk)
    return sha.hexdigest(), blob.hexdigest() if blob is not None else None


def verified_sha256(remote: RemoteFile, path: str | os.PathLike) -> str | None:
    """sha256 of ``path`` if it has the size and hash the hub lists for ``remote``, else None."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size != remote.size:
        return None
    sha256, blob = local_hashes(p, git_sha1=remote.sha256 is None)
    ok = sha256 == remote.sha256 if remote.sha256 is not None else blob == remote.blob_id
    return sha256 if ok else None


def list_remote(api, repo: str, commit: str) -> dict[str, RemoteFile]:
    """Every file of dataset ``repo`` at ``commit`` (``HfApi.list_repo_tree``, recursive)."""
    from huggingface_hub.hf_api import RepoFile

    files = {}
    for entry in api.list_repo_tree(repo, repo_type="dataset", revision=commit, recursive=True):
        if isinstance(entry, RepoFile):
            lfs = entry.lfs
            files[entry.path] = RemoteFile(
                path=entry.path,
                size=lfs.size if lfs else entry.size,
                sha256=lfs.sha256 if lfs else None,
                blob_id=entry.blob_id,
            )
    return files


def fetch(
    repo: str,
    revision: str,
    file_filter: Iterable[str],
    raw_dir: str | os.PathLike,
    *,
    endpoint: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Make ``raw_dir`` hold the selected files of dataset ``repo`` at ``revision``; the manifest.

    ``endpoint`` defaults to huggingface_hub's (``HF_ENDPOINT`` or https://huggingface.co).
    """
    from huggingface_hub import HfApi, hf_hub_download

    file_filter = list(file_filter)
    token, source = env_token(), env_token_var()
    log(f"token: {'from $' + source if source else 'none in the environment (huggingface_hub login, if any)'}")
    api = HfApi(endpoint=endpoint, token=token)
    commit = api.dataset_info(repo, revision=revision).sha
    if not commit:
        raise FetchError(f"the hub returned no commit for dataset {repo}@{revision}")
    log(f"dataset {repo}@{revision} is commit {commit}")
    remote = list_remote(api, repo, commit)
    chosen = select(remote, file_filter)
    if not chosen:
        n = sum(p.endswith(".jsonl") for p in remote)
        raise FetchError(
            f"no *.jsonl in dataset {repo}@{commit} matches data.file_filter={file_filter} "
            f"({n} *.jsonl files in the repo)"
        )
    log(f"data.file_filter={file_filter} selects {len(chosen)} of {len(remote)} files: {chosen}")
    raw = Path(raw_dir)
    files = []
    for path in chosen:
        rf = remote[path]
        dest = raw / path
        sha256 = verified_sha256(rf, dest)
        if sha256 is not None:
            log(f"{path}: already in {raw}, size and hash match the hub's: kept")
        else:
            log(f"{path}: downloading {rf.size:,} bytes")
            hf_hub_download(
                repo,
                path,
                repo_type="dataset",
                revision=commit,
                local_dir=raw,
                token=token,
                endpoint=endpoint,
                force_download=True,  # we checked the local copy ourselves: it is missing or wrong
            )
            sha256 = verified_sha256(rf, dest)
            if sha256 is None:
                dest.unlink(missing_ok=True)
                raise FetchError(
                    f"{path}: the downloaded file does not have the size/hash the hub lists "
                    f"({rf.size} bytes, {'sha256 ' + rf.sha256 if rf.sha256 else 'git blob ' + rf.blob_id}); removed"
                )
            log(f"{path}: downloaded and verified")
        files.append({"path": path, "size": rf.size, "sha256": sha256})
    return {"repo": repo, "revision": revision, "commit": commit, "file_filter": file_filter, "files": files}


MANIFEST_COLUMNS = ("path", "size", "sha256", "repo", "revision", "commit")


def write_manifest(manifest: dict, json_path: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    """The manifest as JSON (sorted keys) and as a CSV table, one row per file."""
    for p in (json_path, csv_path):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{json_path}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(json_path)
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_COLUMNS)
        for f in manifest["files"]:
            w.writerow([f["path"], f["size"], f["sha256"], manifest["repo"], manifest["revision"], manifest["commit"]])


def read_manifest(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
