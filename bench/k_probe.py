"""The probe that chose estimate_k.py's criterion: label-free curves over K, scored against labels.

    python bench/k_probe.py /tmp/k14/redocred/train /tmp/k14/fewrel/train --out /tmp/k14/probe.json

Run it on TRAINING parts only (bench/quality.py's 80 %, encoded with --features): the criterion and
its settings are chosen here, and the held-out 20 % is left for the figures.  For each encoded
directory it computes, over K = 2..100:
  - the mean cosine silhouette of k-means on a subsample (estimate_k.silhouette), for each
    (sample, restarts) setting, and the seconds each scan took;
  - the stability of k-means: the adjusted Rand index between two k-means runs of different seeds
    (one restart each) on two overlapping random 80 % subsamples of the same subsample, on their
    overlap;
  - k-means B3 F1 against the gold relations on all instances (3 restarts), at every K to 20, every
    second to 40, every fifth to 100, and at each K a rule picks (the oracle curve; labels are read
    here, and only here, to judge the rules).  2 CPU cores: about 10 minutes for both sets.
Then, for each rule (raw or smoothed silhouette argmax at several bandwidths, stability, their
product), the K it picks and the B3 F1 there against the best on the curve.  Writes JSON and prints a
table.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from estimate_k import normalise, silhouette, smooth  # noqa: E402
from metrics import ari, b3  # noqa: E402
from model import kmeans  # noqa: E402


def silhouette_curve(x, ks, sample, restarts, seed):
    rng = np.random.default_rng(seed)
    if len(x) > sample:
        x = x[np.sort(rng.choice(len(x), sample, replace=False))]
    t = time.time()
    xt = torch.from_numpy(x)
    sim = xt @ xt.T
    s = [silhouette(sim, kmeans(x, k, seed, restarts=restarts), k) for k in ks]
    return s, time.time() - t


def stability_curve(x, ks, sample, seed):
    rng = np.random.default_rng(seed + 1000)
    if len(x) > sample:
        x = x[np.sort(rng.choice(len(x), sample, replace=False))]
    m = len(x)
    a = np.sort(rng.choice(m, int(0.8 * m), replace=False))
    b = np.sort(rng.choice(m, int(0.8 * m), replace=False))
    both = np.intersect1d(a, b)
    out = []
    t = time.time()
    for k in ks:
        pa = kmeans(x[a], k, seed, restarts=1)
        pb = kmeans(x[b], k, seed + 1, restarts=1)
        la = pa[np.searchsorted(a, both)]
        lb = pb[np.searchsorted(b, both)]
        out.append(ari(la, lb))
    return out, time.time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="encoded training directories with features.npy and labels.npy")
    ap.add_argument("--k-max", type=int, default=100)
    ap.add_argument("--settings", nargs="+", default=["2500:2", "1500:1"],
                    help="sample:restarts of the silhouette scans")
    ap.add_argument("--oracle-restarts", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ks = list(range(2, args.k_max + 1))
    results = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    for d in args.dirs:
        x = normalise(np.load(os.path.join(d, "features.npy"), allow_pickle=False))
        labels = np.load(os.path.join(d, "labels.npy"), allow_pickle=False)
        r = results.setdefault(d, {"n": len(x), "gold": int(len(np.unique(labels)))})
        for setting in args.settings:
            if setting not in r.setdefault("silhouette", {}):
                sample, restarts = map(int, setting.split(":"))
                s, sec = silhouette_curve(x, ks, sample, restarts, args.seed)
                r["silhouette"][setting] = {"curve": s, "seconds": sec}
                print(f"{d}: silhouette {setting} in {sec:.0f} s", flush=True)
        if "stability" not in r:
            s, sec = stability_curve(x, ks, 2500, args.seed)
            r["stability"] = {"curve": s, "seconds": sec}
            print(f"{d}: stability in {sec:.0f} s", flush=True)
        picks = rule_picks(ks, r)
        oracle = r.setdefault("oracle", {})
        todo = sorted(set(GRID) | set(ks[i] for i in picks.values()) - {int(k) for k in oracle})
        t = time.time()
        for k in todo:  # the labels are read here, to judge the rules, and nowhere else
            oracle[str(k)] = b3(labels, kmeans(x, k, args.seed, restarts=args.oracle_restarts))[2]
        r["oracle_seconds"] = r.get("oracle_seconds", 0) + time.time() - t
        print(f"{d}: oracle B3 at {len(todo)} K in {time.time() - t:.0f} s", flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f)

    for d, r in results.items():
        picks = rule_picks(ks, r)
        oracle_k = sorted(int(k) for k in r["oracle"])
        best_k = max(oracle_k, key=lambda k: r["oracle"][str(k)])
        o = lambda k: r["oracle"].get(str(k), float("nan"))
        print(f"\n{d}: N {r['n']}, gold K {r['gold']}; oracle best B3 F1 {100 * o(best_k):.1f} at K = {best_k} "
              f"(over {len(oracle_k)} K of 2..{ks[-1]}); at K = 10: {100 * o(10):.1f}; at gold K: {100 * o(r['gold']):.1f}")
        print("  oracle curve: " + ", ".join(f"{k}: {100 * o(k):.1f}" for k in oracle_k))
        for name, i in sorted(picks.items()):
            k = ks[i]
            print(f"  {name:52} K = {k:3d}  B3 F1 {100 * o(k):5.1f}  gap {100 * (o(best_k) - o(k)):5.1f}")
        for setting, s in r["silhouette"].items():
            print(f"  scan seconds {setting}: {s['seconds']:.1f}")
        print(f"  stability seconds: {r['stability']['seconds']:.1f}")


GRID = list(range(2, 21)) + list(range(22, 41, 2)) + list(range(45, 101, 5))


def rule_picks(ks, r):
    """Index into ks of the K that each rule picks."""
    rules, picks = {}, {}
    for setting, s in r["silhouette"].items():
        for bw in (0, 1, 2, 3, 5, 8, 12):
            sm = smooth(ks, s["curve"], bw)
            rules[f"silhouette {setting}, bandwidth {bw}"] = sm
            if bw:  # the smoothed peak, then the raw maximum within +-bw of it
                c = int(np.argmax(sm))
                lo, hi = max(0, c - int(bw)), min(len(ks), c + int(bw) + 1)
                picks[f"silhouette {setting}, bandwidth {bw}, refined"] = lo + int(np.argmax(s["curve"][lo:hi]))
    st = np.array(r["stability"]["curve"])
    for bw in (0, 3):
        rules[f"stability, bandwidth {bw}"] = smooth(ks, st, bw)
    s0 = np.array(r["silhouette"]["2500:2"]["curve"])
    for bw in (0, 3):
        rules[f"silhouette x stability, bandwidth {bw}"] = smooth(ks, s0 * st, bw)
    picks.update({name: int(np.argmax(curve)) for name, curve in rules.items()})
    return picks


if __name__ == "__main__":
    main()
