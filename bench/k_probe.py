"""The probe that chose estimate_k.py's criterion: label-free rules for K, scored against labels.

    python bench/k_probe.py TRAIN_DIR ... --out /tmp/k/probe.json

Run it on TRAINING parts only (bench/quality.py's 80 %; any directory with features.npy and, beside
it or in the encoded data directory its meta.json names, labels.npy): the criterion and its settings
are chosen here, and the held-out 20 % is left for the figures.  For each directory:
  - each rule's estimate, made by estimate_k.estimate_k itself (no labels): modularity on the
    10-nearest-neighbour graph (the default) smoothed with std 3, 0 and 5, from the type floor; the
    silhouette (2 k-means starts) smoothed with std 3 (the first criterion) and 5; stability (3
    subsample pairs, 2 k-means starts) on the top 64 principal coordinates smoothed with std 5 and 3,
    and on all dimensions (the rule before it) with 2 starts and with 1, std 5; and on typed data the
    64-coordinate stability with std 5 read from a type floor (estimate_k.type_floor: the type pairs
    holding at least 0.5 %, the default before modularity, or 1 % of the instances, or every type pair)
    instead of from 10;
  - k-means B3 F1 against the gold relations at every K of the default grid (10..100) and at each K a
    rule picks, each the MEAN over 3 k-means seeds (3 restarts each): one k-means run moves B3 F1 by
    1-5 points from seed to seed, so the best of 44 single runs would be the luckiest draw.  Labels are
    read here, and only here, to judge the rules.
Then, for each rule, the K it picks, the B3 F1 there, and its gap to the best of the curve.  Writes
JSON (and reuses it: a rerun adds only what is missing) and prints a table.  Cost: 4-5 minutes per
directory of 3,000-4,000 instances on one core.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from estimate_k import TYPE_SHARE, estimate_k, normalise, scan_ks, smooth, type_floor, type_pairs_of  # noqa: E402
from evaluate import seed_mean_b3  # noqa: E402
from rundir import data_dir  # noqa: E402

SCANS = {"modularity": {"criterion": "modularity"}, "silhouette": {"criterion": "silhouette"},
         "stability": {"criterion": "stability"}, "stability, all dimensions": {"criterion": "stability", "dims": 0},
         "stability, 1 start, all dimensions": {"criterion": "stability", "restarts": 1, "dims": 0}}
RULES = {  # name: (scan, bandwidth, share of the type pairs counted for the floor; None: from 10)
    "silhouette, std 3 (the first criterion)": ("silhouette", 3, None),
    "silhouette, std 5": ("silhouette", 5, None),
    "stability, 64 dimensions, std 5, from 10": ("stability", 5, None),
    "stability, 64 dimensions, std 3, from 10": ("stability", 3, None),
    "stability, all dimensions, std 5 (the rule before)": ("stability, all dimensions", 5, None),
    "stability, all dimensions, 1 start, std 5": ("stability, 1 start, all dimensions", 5, None),
    "stability, std 5, from type pairs >= 0.5 % (the default before)": ("stability", 5, TYPE_SHARE),
    "stability, std 5, from type pairs >= 1 %": ("stability", 5, 0.01),
    "stability, std 5, from every type pair": ("stability", 5, 0.0),
    "modularity, std 3, from type pairs >= 0.5 % (the default)": ("modularity", 3, TYPE_SHARE),
    "modularity, std 0, from type pairs >= 0.5 %": ("modularity", 0, TYPE_SHARE),
    "modularity, std 5, from type pairs >= 0.5 %": ("modularity", 5, TYPE_SHARE),
}
SEEDS = 3


def labels_of(d):
    """labels.npy beside features.npy, or else in the encoded data directory behind `d` (rundir.data_dir)."""
    here = os.path.join(d, "labels.npy")
    return np.load(here if os.path.exists(here) else os.path.join(data_dir(d)[0], "labels.npy"), allow_pickle=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="training directories with features.npy (and labels, see above)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    for d in args.dirs:
        features = np.load(os.path.join(d, "features.npy"), allow_pickle=False)
        r = results.setdefault(d, {"n": len(features)})
        for name, settings in SCANS.items():  # no labels here
            if name not in r.setdefault("scans", {}):
                t = time.time()
                _, curve = estimate_k(features, seed=args.seed, bandwidth=0, **settings)
                r["scans"][name] = {"k": curve["k"], "score": curve["score"], "seconds": round(time.time() - t, 1)}
                print(f"{d}: {name} scan in {time.time() - t:.0f} s", flush=True)
        type_pair = type_pairs_of(d)  # an input, like the features: the floor reads no label
        r["picks"] = {rule: pick(r["scans"][scan], bw, 10 if share is None else type_floor(type_pair, share))
                      for rule, (scan, bw, share) in RULES.items()}
        labels = labels_of(d)  # the labels are read here, to judge the rules, and nowhere else
        r["gold"] = int(len(np.unique(labels)))
        x = normalise(features)
        oracle = r.setdefault("oracle", {})
        t = time.time()
        for k in sorted(set(scan_ks(10, 100)) | set(r["picks"].values())):
            if str(k) not in oracle:
                oracle[str(k)] = seed_mean_b3(labels, x, k, args.seed, restarts=3, seeds=SEEDS)
        print(f"{d}: oracle B3 F1 curve in {time.time() - t:.0f} s", flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f)

    for d, r in results.items():
        o = {int(k): v for k, v in r["oracle"].items()}
        grid = [k for k in o if k in scan_ks(10, 100)]
        best = max(grid, key=lambda k: o[k])
        print(f"\n{d}: N {r['n']}, gold K {r['gold']}; best B3 F1 {100 * o[best]:.1f} at K = {best} (mean of "
              f"{SEEDS} k-means seeds, {len(grid)} K of 10..100); at K = 10: {100 * o[10]:.1f}")
        print("  B3 F1 curve: " + ", ".join(f"{k}: {100 * o[k]:.1f}" for k in sorted(grid) if k <= 40))
        for rule, k in r["picks"].items():
            print(f"  {rule:44} K = {k:3d}  B3 F1 {100 * o[k]:5.1f}  gap {100 * (o[best] - o[k]):4.1f}")
        print("  scan seconds: " + ", ".join(f"{name} {s['seconds']}" for name, s in r["scans"].items()))


def pick(scan, bandwidth, lo=10):
    """The K where the scan's curve from K = lo, smoothed with std `bandwidth`, is highest (as estimate_k
    does; each K's score does not depend on the others scanned, so the curve from lo is a part of the
    one from 10)."""
    ks = [k for k in scan["k"] if k >= lo] or scan["k"][-1:]
    scores = [v for k, v in zip(scan["k"], scan["score"]) if k in ks]
    return ks[int(np.argmax(smooth(ks, scores, bandwidth)))]


if __name__ == "__main__":
    main()
