"""Estimate the number of clusters K from a run's features, without labels.

    python estimate_k.py runs/default/siamese                 # writes runs/default/siamese/k.json
    python estimate_k.py runs/default/test --k-min 2 --k-max 100 --plot

Reads RUN/features.npy (written by encode.py --features, train_siamese.py, train_cluster.py or
predict.py) and nothing else of the run: no label is read.  For each K of the range it clusters the
L2-normalised features with k-means (model.kmeans) and scores the clustering with the mean
silhouette on cosine distance (Rousseeuw 1987); the curve of scores is smoothed over K with a
Gaussian kernel, and the estimate is the K where the smoothed curve is highest, as PromptORE does
(silhouette over a range of K, smoothed, then the maximum).  The default range is 10..100, and 10 is
PromptORE's lower end too: on typed data the silhouette peaks at the handful of type-pair groups
(Re-DocRED's training part: K = 3-5, where k-means scores B3 F1 21-25 against 41 at best), which is
no estimate of the number of relations; --k-min 2 scans from 2.  See the README, "How many relations?",
for why this criterion and these settings, measured on the training part of the shared sets only.

Cost: where N is above --sample (2,500), the scan clusters and scores a random subsample of that
many instances; each K gets --restarts (2) k-means runs; K is scanned one by one up to 30, then every
second K up to 60 and every fifth beyond (scan_ks; --every-k scans them all).  The silhouette of one clustering is two
matrix products over the subsample's [m, m] cosine distances.

Edge cases, said on the console and in k.json:
  - the silhouette is not defined for K = 1 (no other cluster) nor for K = N, so the scan runs over
    max(--k-min, 2) .. min(--k-max, N - 1), said when clipped; data with fewer than 3 instances, or
    fewer than --k-min + 1, has no estimate (an error that says so);
  - data that is one cluster still gets K >= 2, since K = 1 cannot be scored; when the best
    silhouette is below --weak (0.05) the message and k.json (`weak: true`) say that the features
    show no clear cluster structure, and that the estimate is then little more than the lower end.

Writes RUN/k.json: {"k", "criterion", settings, "seconds", "n", "sample", "note", "weak",
"curve": {"k": [...], "silhouette": [...], "smoothed": [...]}}, atomically; --plot also draws the curve to RUN/k.png (matplotlib).
"""
import argparse
import os
import time

import numpy as np
import torch

from data import DataError
from model import kmeans
from rundir import atomic_write, fail, load_npy, save_json

K_MIN, K_MAX = 10, 100     # default range, as PromptORE's lower end: below 10 the silhouette of typed data
                           # peaks at its few type-pair groups (README, "How many relations?")
SAMPLE = 2500              # instances clustered and scored per K where N is larger
RESTARTS = 2               # k-means restarts per K in the scan (model.kmeans; evaluation uses 10)
BANDWIDTH = 3.0            # std of the Gaussian kernel that smooths the curve, in units of K
WEAK = 0.05                # best silhouette below this: no clear cluster structure


def normalise(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def silhouette(sim, assign, k):
    """Mean silhouette of clustering `assign` (int [m], K clusters) under the cosine distance 1 - sim,
    `sim` the [m, m] cosine similarities (torch).  A point alone in its cluster scores 0 (the usual
    convention); K must be at least 2."""
    m = sim.shape[0]
    a = torch.as_tensor(assign)
    onehot = torch.zeros(m, k, dtype=sim.dtype)
    onehot[torch.arange(m), a] = 1
    counts = onehot.sum(0)
    dist_sum = counts[None, :] - sim @ onehot          # sum of (1 - sim) to the members of each cluster
    own = counts[a]
    a_i = dist_sum[torch.arange(m), a] / (own - 1).clamp_min(1)  # self-distance 0 is in the sum
    mean_to = dist_sum / counts.clamp_min(1)[None, :]
    mean_to[torch.arange(m), a] = float("inf")
    mean_to[:, counts == 0] = float("inf")
    b_i = mean_to.min(1).values
    s = (b_i - a_i) / torch.maximum(a_i, b_i).clamp_min(1e-12)
    s[own <= 1] = 0
    return float(s.mean())


def smooth(ks, values, bandwidth=BANDWIDTH):
    """Gaussian kernel average of `values` over K (Nadaraya-Watson), std `bandwidth` in units of K;
    0 leaves the curve as it is."""
    ks, values = np.asarray(ks, float), np.asarray(values, float)
    if bandwidth <= 0 or len(ks) < 2:
        return values.copy()
    w = np.exp(-0.5 * ((ks[:, None] - ks[None, :]) / bandwidth) ** 2)
    return (w @ values) / w.sum(1)


def scan_ks(lo, hi, every=False):
    """The K scanned from lo to hi: each K up to 30, every second K up to 60, every fifth beyond (44 K
    from 10 to 100, 35 % of the cost of every K, and the same estimate on the training parts); every
    K with `every`."""
    return [k for k in range(lo, hi + 1)
            if every or k == lo or k <= 30 or (k <= 60 and k % 2 == 0) or (k > 60 and k % 5 == 0)]


def k_range(n, k_min=K_MIN, k_max=K_MAX):
    """The K that can be scored for N instances: max(k_min, 2) .. min(k_max, N - 1), and a note when
    the range had to be clipped (None if not).  Raises DataError when nothing is left."""
    lo, hi = max(k_min, 2), min(k_max, n - 1)
    if n < 3:
        raise DataError(f"estimate K: {n} instance(s); the silhouette needs at least 3 (K from 2 to N - 1)")
    if lo > hi:
        raise DataError(f"estimate K: the range {k_min}..{k_max} leaves nothing to scan with {n} instances "
                        f"(the silhouette is defined for K = 2 .. N - 1 = {n - 1})")
    notes = []
    if k_min < 2:
        notes.append(f"K = {k_min} cannot be scored (the silhouette needs two clusters): the scan starts at 2")
    if k_max > n - 1:
        notes.append(f"only {n} instances: the scan stops at K = {hi} (N - 1) instead of {k_max}")
    return lo, hi, ("; ".join(notes) or None)


def estimate_k(features, k_min=K_MIN, k_max=K_MAX, seed=0, sample=SAMPLE, restarts=RESTARTS,
               bandwidth=BANDWIDTH, log=None, every=False):
    """Label-free estimate of K from `features` [N, D].  Returns (k, curve): the K where the smoothed
    silhouette curve is highest, and a dict with the scanned "k", the "silhouette" of each, its
    "smoothed" curve, and "n", "sample", "note" (a clipped range) and "weak" (best silhouette < WEAK)."""
    x = normalise(features)
    n = x.shape[0]
    lo, hi, note = k_range(n, k_min, k_max)
    if note and log:
        log(note)
    rng = np.random.default_rng(seed)
    if n > sample:
        x = x[np.sort(rng.choice(n, sample, replace=False))]
    xt = torch.from_numpy(x)
    sim = xt @ xt.T
    ks, scores = scan_ks(lo, hi, every), []
    for k in ks:
        scores.append(silhouette(sim, kmeans(x, k, seed, restarts=restarts), k))
    smoothed = smooth(ks, scores, bandwidth)
    best = int(np.argmax(smoothed))
    weak = bool(max(scores) < WEAK)
    curve = {"k": ks, "silhouette": [round(s, 5) for s in scores], "smoothed": [round(float(s), 5) for s in smoothed],
             "n": n, "sample": int(x.shape[0]), "note": note, "weak": weak}
    return ks[best], curve


def record(k, curve, **extra):
    """What k.json (and train_cluster.py's meta.json) hold: the choice, its settings, and the curve."""
    return {"k": k, "criterion": "silhouette (cosine distance) of k-means, Gaussian-smoothed over K, maximum",
            **extra, "n": curve["n"], "sample": curve["sample"], "note": curve["note"], "weak": curve["weak"],
            "curve": {key: curve[key] for key in ("k", "silhouette", "smoothed")}}


def plot(path, k, curve):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["k"], curve["silhouette"], ".", color="0.6", label="silhouette (cosine)")
    ax.plot(curve["k"], curve["smoothed"], "-", label="smoothed")
    ax.axvline(k, color="C3", ls="--", label=f"estimate K = {k}")
    ax.set_xlabel("K")
    ax.set_ylabel("mean silhouette")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="directory holding features.npy")
    ap.add_argument("--k-min", type=int, default=K_MIN)
    ap.add_argument("--k-max", type=int, default=K_MAX)
    ap.add_argument("--sample", type=int, default=SAMPLE, help="instances scored per K where N is larger")
    ap.add_argument("--restarts", type=int, default=RESTARTS, help="k-means restarts per K")
    ap.add_argument("--bandwidth", type=float, default=BANDWIDTH, help="smoothing over K (0: none)")
    ap.add_argument("--every-k", action="store_true", help="scan every K (default: every K to 30, then a grid)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", action="store_true", help="draw the curve to RUN/k.png (needs matplotlib)")
    args = ap.parse_args()
    t0 = time.time()

    def log(msg):
        print(f"[estimate_k {time.time() - t0:6.1f}s] {msg}", flush=True)

    path = os.path.join(args.run, "features.npy")
    if not os.path.exists(path):
        raise DataError(f"{args.run}: no features.npy (encode.py --features, train_siamese.py, "
                        f"train_cluster.py or predict.py write it)")
    feats = load_npy(path)
    if feats.ndim != 2:
        raise DataError(f"{path}: expected a 2-d array [N, D], got shape {feats.shape}")
    log(f"read features {feats.shape} from {path} (no labels are read)")
    k, curve = estimate_k(feats, args.k_min, args.k_max, args.seed, args.sample, args.restarts, args.bandwidth, log,
                          args.every_k)
    seconds = round(time.time() - t0, 1)
    out = os.path.join(args.run, "k.json")
    save_json(out, record(k, curve, features=os.path.abspath(path), k_min=args.k_min, k_max=args.k_max, seed=args.seed,
                          restarts=args.restarts, bandwidth=args.bandwidth, every_k=args.every_k,
                          seconds=seconds))
    i = curve["k"].index(k)
    log(f"estimated K = {k} (smoothed silhouette {curve['smoothed'][i]:.3f}; scanned K = {curve['k'][0]}.."
        f"{curve['k'][-1]} on {curve['sample']} of {curve['n']} instances) in {seconds} s")
    if curve["weak"]:
        log(f"warning: the best silhouette is {max(curve['silhouette']):.3f} (< {WEAK}): the features show no "
            f"clear cluster structure (one cluster?); K = 1 cannot be scored, so K = {k} is a weak estimate")
    if args.plot:
        try:
            plot(os.path.join(args.run, "k.png"), k, curve)
            log(f"curve drawn to {os.path.join(args.run, 'k.png')}")
        except ImportError:
            log("--plot: matplotlib is not installed (pip install matplotlib); k.png not drawn")
    log(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
