"""The shipped sentence corpus (the text the ``minilm`` task tokenizes; see ``tasks/minilm.py``)."""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).parent / "corpus" / "sentences.txt"


def load_sentences() -> list[str]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s]


# The ``corpus-cls`` task: what was done to a corpus sentence, if anything. The classes need
# different depths of reading: a shuffled span breaks local word order (early layers see it), a
# swap of two distant words needs the sentence's syntax, a replaced word needs its meaning in
# context; so easy and hard rows mix, as early exits want.
CORRUPTIONS = ("intact", "swapped", "replaced", "shuffled")


def corrupted(sentence: str, kind: str, rng, vocabulary: list[str]) -> str:
    """``sentence`` with the corruption ``kind`` (one of ``CORRUPTIONS``) applied, drawn from ``rng``
    (a ``random.Random``): two words at different positions and of different spelling swapped;
    one word replaced by a different word drawn from ``vocabulary``; or a span of 4 to 6
    consecutive words put in a different order."""
    words = sentence.split()
    if kind == "intact" or len(words) < 6:
        if kind != "intact":
            raise ValueError(f"corrupting needs sentences of 6 words or more, got {len(words)}")
        return sentence
    if kind == "swapped":
        while True:
            i, j = sorted(rng.sample(range(len(words)), 2))
            if words[i].lower() != words[j].lower():
                words[i], words[j] = words[j], words[i]
                return " ".join(words)
    if kind == "replaced":
        i = rng.randrange(len(words))
        while True:
            w = rng.choice(vocabulary)
            if w.lower() != words[i].lower():
                words[i] = w
                return " ".join(words)
    if kind == "shuffled":
        n = rng.randint(4, 6)
        i = rng.randrange(len(words) - n + 1)
        span = words[i:i + n]
        while True:
            order = rng.sample(span, n)
            if order != span:
                words[i:i + n] = order
                return " ".join(words)
    raise ValueError(f"unknown corruption {kind!r} (known: {list(CORRUPTIONS)})")


def corpus_classification(seed: int = 0, train_variants: int = 2, val_variants: int = 4,
                          test_variants: int = 4) -> dict[str, tuple[list[str], list[int]]]:
    """The ``corpus-cls`` rows: the corpus's sentences of 6 words or more, split in file order as
    the ``minilm`` task splits it (the last 1,000 test, 500 before them validation); each training
    sentence appears ``train_variants`` times, each validation sentence ``val_variants`` times and
    each test sentence ``test_variants`` times, each time with a class drawn uniformly and its own
    corruption (2,000 validation and 4,000 test rows: at 4 classes and about 50% accuracy, 1,000
    rows measure a paired accuracy difference to about +-1 pt, as much as the budgets thresholds
    are calibrated to). Deterministic in ``seed``; the validation draws beyond the first variant
    come from a second generator and the test draws beyond the first from a third, so the training
    rows and the first variant of each split do not depend on the variant counts."""
    import random

    if min(train_variants, val_variants, test_variants) < 1:
        raise ValueError(f"corpus_classification: train_variants, val_variants and test_variants must be >= 1, got "
                         f"{train_variants}, {val_variants} and {test_variants}")
    sentences = [s for s in load_sentences() if len(s.split()) >= 6]
    vocabulary = sorted({w.strip(".,;:!?\"'()") for s in sentences for w in s.split()} - {""})
    rng = random.Random(seed)
    n = len(sentences)
    parts = {"train": (sentences[:n - 1500], train_variants), "val": (sentences[n - 1500:n - 1000], 1),
             "test": (sentences[n - 1000:], 1)}
    out = {}
    for name, (part, variants) in parts.items():
        texts, labels = [], []
        for s in part:
            for _ in range(variants):
                label = rng.randrange(len(CORRUPTIONS))
                texts.append(corrupted(s, CORRUPTIONS[label], rng, vocabulary))
                labels.append(label)
        out[name] = (texts, labels)
    for name, variants, offset in (("val", val_variants, 1), ("test", test_variants, 2)):
        extra = random.Random(seed + offset)
        texts, labels = out[name]
        for s in parts[name][0]:
            for _ in range(variants - 1):
                label = extra.randrange(len(CORRUPTIONS))
                texts.append(corrupted(s, CORRUPTIONS[label], extra, vocabulary))
                labels.append(label)
    return out
