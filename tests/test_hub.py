"""Model locations: local paths vs hub ids (no network)."""

import pytest

from reasonflow import hub


def test_local_paths_and_hub_ids(tmp_path):
    assert hub.is_local(str(tmp_path))
    assert hub.is_local("resources/demo/model")  # a path even before it exists
    assert not hub.is_local("meta-llama/Llama-3.1-8B-Instruct")
    assert hub.local_dir("resources/hub", "meta-llama/Llama-3.1-8B-Instruct") == (
        "resources/hub/meta-llama--Llama-3.1-8B-Instruct"
    )
    assert hub.repo_id_from_dirname("meta-llama--Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    with pytest.raises(ValueError, match="'no spaces allowed' is neither"):
        hub.is_local("no spaces allowed")
