"""Estimate the number of clusters K from a run's features, without labels.

    python estimate_k.py runs/default/siamese                 # writes runs/default/siamese/k.json
    python estimate_k.py runs/default/test --k-min 2 --k-max 100 --plot
    python estimate_k.py runs/default/test --criterion silhouette     # PromptORE's criterion

Reads RUN/features.npy (written by encode.py --features, train_siamese.py, train_cluster.py or
predict.py) and, where the run's encoded data has entity types, its type_pair.npy: no label is read.
For each K of the range it scores the L2-normalised features with a criterion that needs no labels,
smooths the curve of scores over K with a Gaussian kernel and takes the K where the smoothed curve is
highest.  Three criteria:

  - modularity (the default; Newman & Girvan 2004): link each instance to its NEIGHBORS (10) nearest
    instances by cosine (the symmetric graph `knn_graph`), cluster the features with k-means
    (model.kmeans, two seeds) on their top --dims (64) principal coordinates, and score how many of the
    graph's edges the K clusters keep inside, against what clusters of the same total degree would keep
    at random (`modularity`).  Too few clusters keep every edge but are large, so chance keeps many too;
    too many cut groups of mutual neighbours.  It is SCAN's premise, that an instance and its nearest
    neighbours share a relation, read as a criterion for K;
  - stability (Ben-Hur, Elisseeff & Guyon 2002, Lange et al. 2004; the default before): draw two random
    80 % subsamples, cluster each with k-means (other seeds) on the top --dims principal coordinates,
    and compare the two clusterings on the instances they share with the adjusted Rand index
    (metrics.ari); the mean over --pairs (3) pairs of subsamples.  A K that matches the structure of the
    data is found again from other instances and other starts; a K that cuts a group in two, or merges
    two, is not;
  - silhouette (PromptORE's, alteca/PromptORE): the mean silhouette on cosine distance (Rousseeuw
    1987) of one k-means clustering of the features.

On the training parts of the shared sets (18 feature sets: frozen, Siamese and final features of
FewRel, Re-DocRED and FewRel with its entities hidden), the K that modularity picks is 1.0 B3 F1 points
from the best K of 10..40 on average and 2.8 at most, against 1.7 and 5.9 for stability (README, "How
many relations?"; NOTES.md, "Twenty-first session").

The default range is 10..100, PromptORE's lower end: on typed data the criteria favour the handful of
type-pair groups below 10 (Re-DocRED's training part: K = 2-4, where k-means scores B3 F1 16-23
against 41 at best), which is no estimate of the number of relations; --k-min 2 scans from 2.  On
typed data the scan starts no lower than the number of (head type, tail type) pairs that hold at least
TYPE_SHARE (0.5 %) of the instances (type_floor, the type floor): features that carry the types keep
each such pair apart, so fewer clusters merge whole type pairs, and the curves, which fall from the
range's lower end on these features, pick such a K (Re-DocRED: 20 type pairs, the best K of its
training parts 15-31).  See the README, "How many relations?", for why this criterion and these
settings, measured on the training parts of the shared sets only.

Cost: where N is above --sample (2,500), the scan works on a random subsample of that many instances;
K is scanned one by one up to 30, then every second K up to 60 and every fifth beyond (scan_ks;
--every-k scans them all).  Each k-means has --restarts (2) starts.  Modularity runs 2 k-means per K on
the subsample's 64 top principal coordinates and one product of its [m, m] cosine similarities for the
graph; stability 2 x --pairs (6) k-means per K on 80 % of the subsample (on 64 coordinates about 10
times faster than on all 1,536 dimensions, with estimates as close to the best on the training parts);
the silhouette one k-means on all dimensions and two matrix products over the [m, m] cosine distances.

Edge cases, said on the console and in k.json:
  - the scan runs over max(--k-min, 2, the type floor) .. min(--k-max, M - 1), M the number of
    instances each clustering sees (N for modularity and the silhouette, 80 % of N for stability), said
    when clipped or raised; data with too few instances for any K of the range has no estimate (an
    error that says so);
  - data that is one cluster still gets K >= 2, since K = 1 cannot be scored; when the silhouette of
    the clustering at the estimate is below WEAK (0.05) the message and k.json (`weak: true`) say
    that the features show no clear cluster structure, and that the estimate is then little more than
    a point of the range.

Writes RUN/k.json: {"k", "criterion", settings, "seconds", "n", "sample", "note", "type_floor", "weak",
"silhouette_at_k", "curve": {"k": [...], "score": [...], "smoothed": [...]}}, atomically; --plot also
draws the curve to RUN/k.png (matplotlib).
"""
import argparse
import os
import time

import numpy as np
import torch

from data import DataError
from metrics import ari
from model import kmeans
from rundir import atomic_write, data_dir, fail, load_npy, save_json

CRITERIA = ("modularity", "stability", "silhouette")
K_MIN, K_MAX = 10, 100     # default range, as PromptORE's lower end: below 10 the criteria favour the few
                           # type-pair groups of typed data (README, "How many relations?")
SAMPLE = 2500              # instances clustered and scored per K where N is larger
PAIRS = 3                  # stability: pairs of subsamples per K
FRACTION = 0.8             # stability: the share of the instances in each subsample
RESTARTS = 2               # k-means restarts per clustering in the scan (model.kmeans; evaluation uses 10)
DIMS = 64                  # modularity and stability: k-means on the top 64 principal coordinates (0: all)
NEIGHBORS = 10             # modularity: each instance's nearest neighbours in the graph
BANDWIDTH = {"modularity": 3.0, "stability": 5.0, "silhouette": 3.0}  # std of the Gaussian kernel that
                                                                       # smooths the curve, in K
WEAK = 0.05                # silhouette at the estimate below this: no clear cluster structure
TYPE_SHARE = 0.005         # a type pair with at least this share of the instances counts for the type floor
                           # (chosen on the training parts, README "How many relations?")


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


def principal(x, dims):
    """The rows of `x` [m, D] as coordinates on their top `dims` principal axes (centred; the axes from
    the eigenvectors of the [D, D] covariance): squared distances, hence k-means, as in `x` up to the
    variance left out, at dims / D of the cost of k-means' distance products.  `x` itself where dims is
    0 or not below D."""
    if not 0 < dims < x.shape[1]:
        return x
    xt = torch.from_numpy(x).double()
    xt = xt - xt.mean(0)
    _, vecs = torch.linalg.eigh(xt.T @ xt)     # ascending eigenvalues: the last columns are the top axes
    return (xt @ vecs[:, -dims:]).float().numpy()


def knn_graph(sim, n_neighbors=NEIGHBORS):
    """The symmetric nearest-neighbour graph of m instances from their [m, m] cosine similarities `sim`
    (torch): A[i, j] = 1 where j is among the `n_neighbors` nearest of i, or i among those of j (at most
    m - 1 neighbours each).  float32 [m, m], zero diagonal."""
    m = sim.shape[0]
    s = sim.clone()
    s.fill_diagonal_(-float("inf"))
    nearest = s.topk(min(n_neighbors, m - 1), dim=1).indices
    a = torch.zeros(m, m)
    a[torch.arange(m)[:, None], nearest] = 1
    return torch.maximum(a, a.T)


def modularity(a, assign):
    """Newman's modularity Q of the clustering `assign` (int [m]) of graph `a` (float [m, m], symmetric):
    the share of the edges that lie inside clusters, less the share a random graph with the same degrees
    would put there, Q = sum_c (e_c / E - (d_c / 2E)^2), e_c the edges inside cluster c, d_c the sum of
    its degrees, E all edges (Newman & Girvan 2004).  0 for one cluster, about 0 for a random cut; it
    grows as the clusters keep the neighbours together, and falls when a group of mutual neighbours is
    cut."""
    c = torch.as_tensor(np.asarray(assign), dtype=torch.long)
    onehot = torch.zeros(len(c), int(c.max()) + 1)
    onehot[torch.arange(len(c)), c] = 1
    degree = a.sum(1)
    total = degree.sum()  # 2E
    inside = ((onehot.T @ a) * onehot.T).sum(1) / total  # e_c / E: both ends of an inside edge counted
    share = (onehot.T @ degree) / total
    return float((inside - share * share).sum())


def modularity_scan(x, sim, ks, seed=0, restarts=RESTARTS, dims=DIMS, n_neighbors=NEIGHBORS):
    """For each K of `ks`: the mean modularity, on the `n_neighbors`-nearest-neighbour graph of the rows
    of `x` (knn_graph of their cosine similarities `sim`), of two k-means clusterings (seeds `seed` and
    `seed` + 1, `restarts` starts each) on the rows' top `dims` principal coordinates (`principal`).  The
    mined neighbours are what the method's clustering stage groups together (SCAN's premise); a K that
    keeps most of them inside clusters, and not only because the clusters are few and large, scores high."""
    a = knn_graph(sim, n_neighbors)
    p = principal(x, dims)
    return [float(np.mean([modularity(a, kmeans(p, k, seed + s, restarts)) for s in range(2)])) for k in ks]


def stability(x, ks, pairs=PAIRS, seed=0, restarts=RESTARTS, dims=DIMS):
    """For each K of `ks`: the mean, over `pairs` pairs of random subsamples of `x` (each FRACTION of
    the rows), of the adjusted Rand index between k-means on the one and k-means on the other
    (`restarts` starts each, other seeds), compared on the rows the two subsamples share.  k-means
    runs on the rows' top `dims` principal coordinates (`principal`; 0: on `x` itself)."""
    x = principal(x, dims)
    rng = np.random.default_rng(seed)
    m = len(x)
    draws = []
    for _ in range(pairs):
        a, b = (np.sort(rng.choice(m, int(FRACTION * m), replace=False)) for _ in range(2))
        both = np.intersect1d(a, b)
        draws.append((a, b, np.searchsorted(a, both), np.searchsorted(b, both)))
    scores = []
    for k in ks:
        agree = [ari(kmeans(x[a], k, seed + 2 * p, restarts)[in_a], kmeans(x[b], k, seed + 2 * p + 1, restarts)[in_b])
                 for p, (a, b, in_a, in_b) in enumerate(draws)]
        scores.append(float(np.mean(agree)))
    return scores


def smooth(ks, values, bandwidth):
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


def k_range(n, k_min=K_MIN, k_max=K_MAX, criterion="modularity", sample=SAMPLE):
    """The K that can be scored for N instances: max(k_min, 2) .. min(k_max, M - 1), M the instances
    that each clustering sees (modularity and the silhouette: N, or the subsample where N > sample;
    stability: FRACTION of that), and a note when the range had to be clipped (None if not).  Raises
    DataError when nothing is left."""
    m = min(n, sample)
    if criterion == "stability":
        m = int(FRACTION * m)
    seen = "N" if m == n else f"the {m} instances each clustering sees"
    if m < 3:
        raise DataError(f"estimate K: {n} instance(s); the {criterion} needs at least 3 in each clustering "
                        f"(K from 2 to {seen} - 1)")
    lo, hi = max(k_min, 2), min(k_max, m - 1)
    if lo > hi:
        raise DataError(f"estimate K: the range {k_min}..{k_max} leaves nothing to scan with {n} instances "
                        f"(the {criterion} is defined for K = 2 .. {seen} - 1 = {m - 1})")
    notes = []
    if k_min < 2:
        notes.append(f"K = {k_min} cannot be scored (the {criterion} needs two clusters): the scan starts at 2")
    if k_max > m - 1:
        notes.append(f"only {n} instances: the scan stops at K = {hi} ({seen} - 1) instead of {k_max}")
    return lo, hi, ("; ".join(notes) or None)


def type_floor(type_pair, share=TYPE_SHARE):
    """The number of (head type, tail type) pairs that hold at least `share` of the instances
    (`type_pair`: a pair id per instance, encode.py's type_pair.npy); 0 for data without types (None)."""
    if type_pair is None:
        return 0
    _, counts = np.unique(np.asarray(type_pair), return_counts=True)
    return int((counts >= share * len(type_pair)).sum())


def type_pairs_of(run):
    """type_pair.npy of the encoded data behind directory `run` (the run itself if it is encode.py's,
    else the data directory its meta.json names), or None: no meta.json, or data without types."""
    if not os.path.exists(os.path.join(run, "meta.json")):
        return None
    data, meta = data_dir(run)
    path = os.path.join(data, "type_pair.npy")
    return np.asarray(load_npy(path, meta["n_instances"])) if os.path.exists(path) else None


def estimate_k(features, k_min=K_MIN, k_max=K_MAX, seed=0, criterion="modularity", sample=SAMPLE, pairs=PAIRS,
               restarts=RESTARTS, bandwidth=None, log=None, every=False, dims=DIMS, type_pair=None):
    """Label-free estimate of K from `features` [N, D].  Returns (k, curve): the K where the smoothed
    curve of the criterion ("modularity", "stability" or "silhouette") is highest, and a dict with the
    scanned "k", the "score" of each, its "smoothed" curve (bandwidth: BANDWIDTH[criterion] unless
    given), and "n", "sample", "note" (a clipped or raised range), "type_floor", "silhouette_at_k" (of one
    k-means at the estimate, --restarts starts) and "weak" (that silhouette below WEAK).  `type_pair` (a type-pair id
    per instance, or None): the scan starts no lower than type_floor(type_pair)."""
    if criterion not in CRITERIA:
        raise DataError(f"estimate K: criterion {criterion!r}: must be one of {', '.join(CRITERIA)}")
    bandwidth = BANDWIDTH[criterion] if bandwidth is None else bandwidth
    x = normalise(features)
    n = x.shape[0]
    if type_pair is not None and len(type_pair) != n:
        raise DataError(f"estimate K: {len(type_pair)} type-pair ids for {n} instances' features")
    lo, hi, note = k_range(n, k_min, k_max, criterion, sample)
    floor = type_floor(type_pair)
    if floor > lo:
        lo = min(floor, hi)
        raised = (f"the scan starts at K = {lo}: the data has {floor} (head type, tail type) pairs that hold at "
                  f"least {100 * TYPE_SHARE:g} % of the instances")
        note = "; ".join(filter(None, [note, raised]))
    if note and log:
        log(note)
    rng = np.random.default_rng(seed)
    if n > sample:
        x = x[np.sort(rng.choice(n, sample, replace=False))]
    xt = torch.from_numpy(x)
    sim = xt @ xt.T
    ks = scan_ks(lo, hi, every)
    if criterion == "stability":
        scores = stability(x, ks, pairs, seed, restarts, dims)
    elif criterion == "modularity":
        scores = modularity_scan(x, sim, ks, seed, restarts, dims)
    else:
        scores = [silhouette(sim, kmeans(x, k, seed, restarts=restarts), k) for k in ks]
    smoothed = smooth(ks, scores, bandwidth)
    best = int(np.argmax(smoothed))
    k = ks[best]
    # the silhouette of k-means at the estimate: the scan's own score where the scan is the silhouette
    at_k = scores[best] if criterion == "silhouette" else silhouette(sim, kmeans(x, k, seed, restarts=restarts), k)
    curve = {"k": ks, "score": [round(float(s), 5) for s in scores], "smoothed": [round(float(s), 5) for s in smoothed],
             "n": n, "sample": int(x.shape[0]), "note": note, "type_floor": floor, "silhouette_at_k": round(at_k, 5),
             "weak": bool(at_k < WEAK), "criterion": criterion, "bandwidth": bandwidth, "restarts": restarts,
             "pairs": pairs if criterion == "stability" else None, "dims": dims if criterion != "silhouette" else None}
    return k, curve


CRITERION_NAMES = {
    "modularity": f"modularity: of k-means on the {NEIGHBORS}-nearest-neighbour graph, Gaussian-smoothed over K, maximum",
    "stability": "stability: mean ARI of k-means on pairs of random 80 % subsamples, Gaussian-smoothed over K, maximum",
    "silhouette": "silhouette (cosine distance) of k-means, Gaussian-smoothed over K, maximum"}


def record(k, curve, **extra):
    """What k.json (and train_cluster.py's meta.json) hold: the choice, its settings, and the curve."""
    return {"k": k, "criterion": CRITERION_NAMES[curve["criterion"]], "bandwidth": curve["bandwidth"],
            **extra, "n": curve["n"], "sample": curve["sample"], "note": curve["note"],
            "type_floor": curve["type_floor"], "weak": curve["weak"],
            "restarts": curve["restarts"], "pairs": curve["pairs"], "dims": curve["dims"],
            "silhouette_at_k": curve["silhouette_at_k"],
            "curve": {key: curve[key] for key in ("k", "score", "smoothed")}}


LABELS = {"modularity": f"modularity ({NEIGHBORS}-nearest-neighbour graph)", "stability": "stability (mean ARI of subsamples)",
          "silhouette": "mean silhouette (cosine)"}


def plot(path, k, curve):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["k"], curve["score"], ".", color="0.6", label=curve["criterion"])
    ax.plot(curve["k"], curve["smoothed"], "-", label="smoothed")
    ax.axvline(k, color="C3", ls="--", label=f"estimate K = {k}")
    ax.set_xlabel("K")
    ax.set_ylabel(LABELS[curve["criterion"]])
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="directory holding features.npy")
    ap.add_argument("--criterion", choices=CRITERIA, default="modularity",
                    help="modularity of k-means on the nearest-neighbour graph (default), stability of k-means "
                         "across subsamples, or the silhouette (PromptORE's)")
    ap.add_argument("--k-min", type=int, default=K_MIN)
    ap.add_argument("--k-max", type=int, default=K_MAX)
    ap.add_argument("--sample", type=int, default=SAMPLE, help="instances scanned where N is larger")
    ap.add_argument("--pairs", type=int, default=PAIRS, help="stability: pairs of subsamples per K")
    ap.add_argument("--restarts", type=int, default=RESTARTS, help="k-means restarts per clustering of the scan")
    ap.add_argument("--dims", type=int, default=DIMS,
                    help="modularity and stability: k-means on the top DIMS principal coordinates of the features "
                         "(0: all)")
    ap.add_argument("--bandwidth", type=float,
                    help="smoothing over K, in K (0: none; default 3 for modularity and the silhouette, 5 for "
                         "stability)")
    ap.add_argument("--every-k", action="store_true", help="scan every K (default: every K to 30, then a grid)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", action="store_true", help="draw the curve to RUN/k.png (needs matplotlib)")
    args = ap.parse_args()
    t0 = time.time()

    def log(msg):
        print(f"[estimate_k {time.time() - t0:6.1f}s] {msg}", flush=True)

    if args.pairs < 1 or args.sample < 3 or args.restarts < 1 or args.dims < 0:
        raise DataError(f"--pairs {args.pairs}, --sample {args.sample}, --restarts {args.restarts}, "
                        f"--dims {args.dims}: need at least 1 pair, 3 instances, 1 restart and 0 dimensions")
    path = os.path.join(args.run, "features.npy")
    if not os.path.exists(path):
        raise DataError(f"{args.run}: no features.npy (encode.py --features, train_siamese.py, "
                        f"train_cluster.py or predict.py write it)")
    feats = load_npy(path)
    if feats.ndim != 2:
        raise DataError(f"{path}: expected a 2-d array [N, D], got shape {feats.shape}")
    log(f"read features {feats.shape} from {path} (no labels are read)")
    type_pair = type_pairs_of(args.run)
    if type_pair is not None:
        log(f"read the type pairs of its {len(type_pair)} instances ({type_floor(type_pair)} hold at least "
            f"{100 * TYPE_SHARE:g} % of them)")
    k, curve = estimate_k(feats, args.k_min, args.k_max, args.seed, args.criterion, args.sample, args.pairs,
                          args.restarts, args.bandwidth, log, args.every_k, args.dims, type_pair)
    seconds = round(time.time() - t0, 1)
    out = os.path.join(args.run, "k.json")
    save_json(out, record(k, curve, features=os.path.abspath(path), k_min=args.k_min, k_max=args.k_max, seed=args.seed,
                          every_k=args.every_k, seconds=seconds))
    i = curve["k"].index(k)
    log(f"estimated K = {k} (smoothed {curve['criterion']} {curve['smoothed'][i]:.3f}; scanned K = {curve['k'][0]}.."
        f"{curve['k'][-1]} on {curve['sample']} of {curve['n']} instances) in {seconds} s")
    if curve["weak"]:
        log(f"warning: the silhouette of k-means at K = {k} is {curve['silhouette_at_k']:.3f} (< {WEAK}): the "
            f"features show no clear cluster structure (one cluster?); K = 1 cannot be scored, so K = {k} is a "
            f"weak estimate")
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
