"""The shipped sentence corpus (the text the ``minilm`` task tokenizes; see ``tasks/minilm.py``)."""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).parent / "corpus" / "sentences.txt"


def load_sentences() -> list[str]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s]
