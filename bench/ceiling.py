"""How much relation a feature set holds, and how much of it k-means finds: a DIAGNOSTIC that reads labels.

    python bench/ceiling.py TRAIN_DIR ... --k 16 --out /tmp/ceiling.json

Run it on TRAINING parts (bench/quality.py's 80 %; any directory with features.npy and, beside it or in
the encoded data directory its meta.json names, labels.npy and context_key.npy).  For each directory:
  - k-means on r, B3 F1 (the mean over 3 k-means seeds of 3 restarts, evaluate.seed_mean_b3);
  - k-means on r mapped by the RELATION-CONTEXT LDA, which reads no label: the directions in which r
    varies most against its variation inside the relation-context groups of encode.py (context_key.npy:
    instances with the same words between their entities), model.lda_map;
  - two CEILINGS, fitted to the gold relations, so not methods: the accuracy of a linear probe
    (logistic regression, 5-fold), which says whether the relation is in r at all; and k-means on a random
    half of the instances mapped by the LDA of the gold relations of the other half, beside k-means on r
    on that same half, which says how far a linear re-weighting of r could take k-means.
Prints a line per directory and writes JSON.  NOTES.md ("A linear look at r") has what it showed.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import DataError  # noqa: E402
from estimate_k import normalise  # noqa: E402
from evaluate import lda_features, seed_mean_b3  # noqa: E402
from rundir import data_dir  # noqa: E402
from model import LDA_DIMS, LDA_SHRINK, lda_map  # noqa: E402
from rundir import fail  # noqa: E402

def probe_accuracy(x, labels, folds=5, seed=0):
    """Mean held-out accuracy of an L2-regularised logistic regression on the rows of x (LBFGS)."""
    _, y = np.unique(labels, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(x))
    hits = 0
    for part in np.array_split(order, folds):
        train = np.setdiff1d(order, part)
        torch.manual_seed(seed)
        lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
        xt, yt = torch.from_numpy(10 * x[train]), torch.from_numpy(y[train])
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(lin(xt), yt) + 1e-4 * lin.weight.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            hits += int((lin(torch.from_numpy(10 * x[part])).argmax(1).numpy() == y[part]).sum())
    return hits / len(x)


def ceiling(d, k, seed=0, dims=LDA_DIMS, shrink=LDA_SHRINK):
    t0 = time.time()
    x = normalise(np.load(os.path.join(d, "features.npy"), allow_pickle=False))
    enc = d if os.path.exists(os.path.join(d, "labels.npy")) else data_dir(d)[0]
    if not os.path.exists(os.path.join(enc, "context_key.npy")):
        raise DataError(f"{enc}: no context_key.npy (encoded by an older version): run encode.py again")
    labels = np.load(os.path.join(enc, "labels.npy"), allow_pickle=False)  # read to score, and by the ceilings
    groups = np.load(os.path.join(enc, "context_key.npy"), allow_pickle=False)
    r = {"n": len(x), "k": k, "context_coverage": float((groups >= 0).mean()),
         "kmeans_r": seed_mean_b3(labels, x, k, seed),
         "kmeans_context_lda": seed_mean_b3(labels, lda_features(x, lda_map(x, groups, dims, shrink)), k, seed),
         "probe_accuracy": probe_accuracy(x, labels, seed=seed)}
    order = np.random.default_rng(seed).permutation(len(x))
    fit, score = order[: len(x) // 2], order[len(x) // 2:]
    r["kmeans_r_half"] = seed_mean_b3(labels[score], x[score], k, seed)
    gold_fit = lda_map(x[fit], labels[fit], dims, shrink)
    r["kmeans_gold_lda_half"] = seed_mean_b3(labels[score], lda_features(x[score], gold_fit), k, seed)
    r["seconds"] = round(time.time() - t0, 1)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="training directories with features.npy (labels: see above)")
    ap.add_argument("--k", type=int, required=True, help="clusters for k-means")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dims", type=int, default=LDA_DIMS, help="directions kept by each LDA")
    ap.add_argument("--shrink", type=float, default=LDA_SHRINK,
                    help="within-group covariance + shrink x its mean variance")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = {}
    for d in args.dirs:
        try:
            r = results[d] = ceiling(d, args.k, args.seed, args.dims, args.shrink)
        except DataError as e:
            fail(e)
        print(f"{d}: N {r['n']}, K {args.k}, B3 F1 of k-means on r {100 * r['kmeans_r']:.1f}, on the "
              f"relation-context LDA (no labels; {100 * r['context_coverage']:.0f} % in groups) "
              f"{100 * r['kmeans_context_lda']:.1f} | CEILINGS (gold fitted): linear probe accuracy "
              f"{100 * r['probe_accuracy']:.1f}; on a half, k-means on r {100 * r['kmeans_r_half']:.1f}, on the "
              f"gold LDA of the other half {100 * r['kmeans_gold_lda_half']:.1f} ({r['seconds']} s)", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
