"""The labelled evaluation set stays above its targets (recall >= 0.99, precision >= 0.98)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "guard_eval.py"


def test_secrets_and_pii_meet_their_targets_on_the_labelled_set(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("guard_eval", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["guard_eval"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    items = module.load()
    assert len(items) >= 500
    assert sum(1 for item in items if not item["labels"]) >= 200  # hard negatives and clean prose
    tallies = module.evaluate(items)
    capsys.readouterr()
    for name in ("secrets", "pii"):
        tally = tallies[name]
        assert tally.labels >= 200
        assert tally.recall >= 0.99, (name, tally.recall)
        assert tally.precision >= 0.98, (name, tally.precision)
