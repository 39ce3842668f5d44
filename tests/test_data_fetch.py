"""fetch_data: selection, verification and manifest against a local stand-in for the Hub (no network),
then one real Snakemake run with data.source set: fetch, split, rerun, dry runs before and after."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, planned
from hub_standin import HubStandIn, git_blob_sha1
from reasonflow.data_fetch import FetchError, RemoteFile, fetch, select, verified_sha256, write_manifest

DATASET = "nvidia/Llama-Nemotron-Post-Training-Dataset"
TOKEN = "hf_standin_SECRET_7f3a9c"  # what the stand-in asks for; must never land in a file
FILTER = ["chat", "math_v1.1"]
SELECTED = ["SFT/chat/chat.jsonl", "SFT/math/math_v1.1.jsonl"]


def _head(path: Path, lines: int) -> bytes:
    with open(path, "rb") as fh:
        return b"".join(fh.readline() for _ in range(lines))


@pytest.fixture(scope="module")
def served(demo_dir) -> dict[str, bytes]:
    """The stand-in repo: two files the filter selects, three it must not."""
    raw = demo_dir / "raw" / "SFT"
    return {
        "SFT/chat/chat.jsonl": _head(raw / "chat/chat.jsonl", 150),
        "SFT/math/math_v1.1.jsonl": _head(raw / "math/math_v1.1.jsonl", 150),
        "SFT/math/math_v1.jsonl": _head(raw / "math/math_v1.jsonl", 20),  # 'math_v1.1' is not in its path
        "SFT/safety/safety.jsonl": _head(raw / "safety/safety.jsonl", 20),
        "SFT/chat/README.md": b"'chat' is in this path, but it is no *.jsonl\n",
    }


@pytest.fixture
def hub(served):
    with HubStandIn(DATASET, served, token=TOKEN) as h:
        yield h


@pytest.fixture
def online(monkeypatch, hub):
    """huggingface_hub in this process talks to the stand-in, as HF_ENDPOINT would make it at import
    (other test modules switch it offline)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)


def test_select_is_the_local_raw_dir_rule():
    paths = ["SFT/math/math_v1.1.jsonl", "SFT/chat/chat.jsonl", "SFT/chat/README.md", "SFT/math/math_v1.jsonl",
             "SFT/safety/safety.jsonl", "SFT/math/math_v1.1_extra.jsonl", "chat/notes.txt"]
    assert select(paths, FILTER) == ["SFT/chat/chat.jsonl", "SFT/math/math_v1.1.jsonl", "SFT/math/math_v1.1_extra.jsonl"]
    assert select(paths, ["nothing"]) == []


def test_verified_sha256_checks_size_and_the_hubs_hash(tmp_path):
    data = b'{"input": [], "output": "x"}\n' * 3
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    lfs = RemoteFile("f.jsonl", len(data), sha, "pointer-blob")
    assert verified_sha256(lfs, path) == sha
    assert verified_sha256(RemoteFile("f.jsonl", len(data), "0" * 64, "pointer-blob"), path) is None
    assert verified_sha256(RemoteFile("f.jsonl", len(data) + 1, sha, "pointer-blob"), path) is None
    in_git = RemoteFile("f.jsonl", len(data), None, git_blob_sha1(data))
    assert verified_sha256(in_git, path) == sha  # a file stored in git is checked by its blob sha1
    assert verified_sha256(RemoteFile("f.jsonl", len(data), None, "1" * 40), path) is None
    assert verified_sha256(lfs, tmp_path / "missing.jsonl") is None


def test_fetch_takes_exactly_the_selection_and_writes_the_manifest(tmp_path, hub, online, served):
    log: list[str] = []
    manifest = fetch(DATASET, "main", FILTER, tmp_path / "raw", endpoint=hub.url, log=log.append)

    assert sorted(hub.downloads("GET")) == SELECTED
    assert _files_under(tmp_path / "raw") == SELECTED
    for path in SELECTED:
        assert (tmp_path / "raw" / path).read_bytes() == served[path]
    assert manifest == {
        "repo": DATASET, "revision": "main", "commit": hub.commit, "file_filter": FILTER,
        "files": [{"path": p, "size": len(served[p]), "sha256": hashlib.sha256(served[p]).hexdigest()}
                  for p in SELECTED],
    }
    dataset_calls = [a for (m, p), a in zip(hub.requests, hub.auth_headers) if "/datasets/" in p]
    assert dataset_calls and all(a == f"Bearer {TOKEN}" for a in dataset_calls)  # the token was used ...

    write_manifest(manifest, tmp_path / "m.json", tmp_path / "m.csv")
    assert json.loads((tmp_path / "m.json").read_text()) == manifest
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [(r["path"], int(r["size"]), r["sha256"], r["revision"], r["commit"]) for r in rows] == [
        (f["path"], f["size"], f["sha256"], "main", hub.commit) for f in manifest["files"]]
    assert "token: from $HF_TOKEN" in log
    for text in ("\n".join(log), (tmp_path / "m.json").read_text(), (tmp_path / "m.csv").read_text()):
        assert TOKEN not in text  # ... and written nowhere


def test_refetch_keeps_verified_files_and_replaces_a_changed_one(tmp_path, hub, online, served):
    raw = tmp_path / "raw"
    fetch(DATASET, hub.commit, FILTER, raw, endpoint=hub.url, log=lambda _: None)
    kept = raw / SELECTED[0]
    mtime = kept.stat().st_mtime_ns
    (raw / SELECTED[1]).write_bytes(served[SELECTED[1]][:-10] + b"tampered!\n")  # same size, other bytes

    log: list[str] = []
    again = fetch(DATASET, hub.commit, FILTER, raw, endpoint=hub.url, log=log.append)
    assert hub.downloads("GET")[2:] == [SELECTED[1]]  # only the changed file was downloaded again
    assert kept.stat().st_mtime_ns == mtime  # untouched: Snakemake sees no change
    assert (raw / SELECTED[1]).read_bytes() == served[SELECTED[1]]
    assert [f["sha256"] for f in again["files"]] == [hashlib.sha256(served[p]).hexdigest() for p in SELECTED]
    assert any("already in" in line and SELECTED[0] in line for line in log)

    fetch(DATASET, hub.commit, FILTER, raw, endpoint=hub.url, log=lambda _: None)
    assert len(hub.downloads("GET")) == 3  # nothing downloaded the third time


def test_a_download_that_fails_its_check_is_removed_and_named(tmp_path, hub, online):
    hub.corrupt.add(SELECTED[0])
    with pytest.raises(FetchError, match="SFT/chat/chat.jsonl: the downloaded file does not have the size/hash"):
        fetch(DATASET, "main", FILTER, tmp_path / "raw", endpoint=hub.url, log=lambda _: None)
    assert not (tmp_path / "raw" / SELECTED[0]).exists()


def test_a_filter_that_selects_nothing_is_named(tmp_path, hub, online):
    with pytest.raises(FetchError, match=r"data.file_filter=\['no_such_file'\] \(4 \*.jsonl files in the repo\)"):
        fetch(DATASET, "main", ["no_such_file"], tmp_path / "raw", endpoint=hub.url, log=lambda _: None)
    assert hub.downloads("GET") == []


# -- the workflow -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_workflow_fetches_then_splits_and_does_not_refetch(tmp_path, demo_dir, served):
    from reasonflow.split import shard_count

    wd = tmp_path
    (wd / "config").symlink_to(REPO / "config")
    (wd / "resources/demo").mkdir(parents=True)
    for entry in demo_dir.iterdir():
        if entry.name != "raw":
            (wd / "resources/demo" / entry.name).symlink_to(entry)
    cfg = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    cfg["data"].update(raw_dir="data/raw", shard_mb=0.05, source={"repo": DATASET, "revision": "main"})
    (wd / "source.yaml").write_text(yaml.safe_dump(cfg))
    shard_bytes = int(0.05 * 2**20)
    shards = {p: shard_count(len(served[p]), shard_bytes) for p in SELECTED}
    targets = [f"results/curation/shards/{p.removesuffix('.jsonl')}/{i:05d}.jsonl" for p in SELECTED
               for i in range(shards[p])]
    assert sum(shards.values()) >= 4

    with HubStandIn(DATASET, served, token=TOKEN) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(wd / "hf_home")}
        env.pop("HUGGING_FACE_HUB_TOKEN", None)

        def snakemake(*args, ok=True):
            cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(wd), "--cores", "2", *args,
                   "--configfile", str(wd / "source.yaml")]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
            assert (proc.returncode == 0) == ok, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            return proc

        before = snakemake("-n")  # the dry run before the fetch: no shard jobs yet (README says so)
        jobs = planned(before)
        assert jobs["fetch_data"] == 1 and "split_shard" not in jobs and "curate_shard" not in jobs
        assert "checkpoint" in before.stdout + before.stderr
        assert hub.requests == []  # a dry run does not touch the hub

        snakemake(*targets)
        assert sorted(hub.downloads("GET")) == SELECTED  # only the selected files were fetched
        assert _files_under(wd / "data/raw") == SELECTED
        manifest = json.loads((wd / "results/data/manifest.json").read_text())
        assert (manifest["repo"], manifest["revision"], manifest["commit"]) == (DATASET, "main", hub.commit)
        assert manifest["files"] == [{"path": p, "size": len(served[p]), "sha256": hashlib.sha256(served[p]).hexdigest()}
                                     for p in SELECTED]
        for p in SELECTED:  # the split jobs ran on the fetched files: every line in exactly one shard
            infos = [json.loads((wd / t).with_suffix(".json").read_text()) for t in targets if p[:-6] in t]
            assert len(infos) == shards[p] and {i["source"] for i in infos} == {p}
            assert sum(i["lines"] for i in infos) == served[p].count(b"\n")

        n = len(hub.requests)
        again = snakemake(*targets)
        assert "Nothing to be done" in again.stdout + again.stderr and hub.requests[n:] == []  # no refetch

        after = planned(snakemake("-n"))  # after the fetch the plan is complete again
        assert "fetch_data" not in after and "split_shard" not in after
        assert after["curate_shard"] == sum(shards.values())

        snakemake("--report", str(wd / "report.zip"), "results/data/manifest.csv")
        lint = subprocess.run([str(BIN / "snakemake"), "--lint", "-s", str(REPO / "Snakefile"), "-d", str(wd),
                               "--configfile", str(wd / "source.yaml")], capture_output=True, text=True, env=env)
        assert "Congratulations" in lint.stdout + lint.stderr, lint.stdout + lint.stderr

        (wd / "data/raw" / SELECTED[1]).rename(wd / "moved.jsonl")  # a fetched file vanishes: named, with the fix
        gone = snakemake("-n", ok=False)
        out = gone.stdout + gone.stderr
        assert f"['{SELECTED[1]}'] listed in results/data/manifest.json are gone" in out and "-R fetch_data" in out
        (wd / "moved.jsonl").rename(wd / "data/raw" / SELECTED[1])

    with zipfile.ZipFile(wd / "report.zip") as z:  # the report shows the manifest, with its caption
        assert any(name.endswith("manifest.csv") for name in z.namelist())
        html = z.read(next(n for n in z.namelist() if n.endswith("report.html"))).decode()
    assert "is what the shard plan is made from" in html and TOKEN not in html
    assert "token: from $HF_TOKEN" in (wd / "logs/fetch_data.log").read_text()
    leaked = [os.path.join(d, f) for d, _, names in os.walk(wd) for f in names
              if not os.path.islink(os.path.join(d, f)) and TOKEN.encode() in Path(d, f).read_bytes()]
    assert leaked == []  # not in params (.snakemake/metadata), logs, results, report or configs
