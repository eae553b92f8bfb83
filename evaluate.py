"""Stage 6: score clusterings against the gold relations (the only stage that reads labels.npy).

    python evaluate.py runs/default/test_cluster runs/default/test_siamese runs/default/test --k 10
    python evaluate.py runs/default/test_siamese runs/default/test --k auto --k-scan

Each directory given is an encoded data directory (encode.py) or a model's output on one
(train_siamese.py, train_cluster.py, predict.py: their meta.json names the data directory).  It gives
one row per clustering it holds:
    pred.npy       the clustering head's clusters, scored as they are;
    features.npy   clustered with k-means (K = --k) on L2-normalised features;
                   for a predict.py output, also "training-part k-means": k-means fitted to its model's
                   features.npy (the training data's features of the same kind) and each instance here
                   assigned to the nearest of those centroids, fitted as the clustering head is (the row
                   above is fitted to this part's own features, which the head never sees).
Beside them, whenever the data has entity types, the reference points "one cluster per (head type,
tail type) pair" (any number of clusters) and "type pairs held to K" (the K - 1 largest type pairs as
their own clusters, all the others as one; the same as the first where there are at most K type pairs).
--lda-from TRAIN adds the reference row "k-means, frozen + context LDA": the data's frozen features
(encode.py --features) mapped by the linear discriminant of the relation-context groups (model.lda_map),
fitted on the frozen features and context_key.npy of the encoded training directory TRAIN, which
reads no label, then k-means.  A label-free linear baseline (README, "Results").
--k auto takes K from the clustering head (the width of probs.npy in the first directory that has
one), or else estimates it from the first directory's features without labels (estimate_k.py).
--k-scan adds a second table for each features.npy: K estimated on those features without labels
(estimate_k.py; on typed data from the type floor of the data's type pairs), the gold number of
relations, and k-means B3 F1 at the estimate, at K = 10, at the gold K, and the best over the default
range 10..100 (the type floor does not narrow it), an ORACLE that reads the labels (evaluation only:
nothing chooses K with it); every figure of that table is the mean over 3 k-means seeds (3
restarts each), so that the oracle is not the luckiest of many single runs.  Where the training part's
features of the same kind are known (a predict.py output: its model's features.npy; the encoded
directory: --lda-from TRAIN's), K is also estimated on them, as train_cluster.py --k auto would, and
scored on this part.
All directories must be outputs on the same data as it is now (the fingerprints in their meta.json
are checked: one made before the data was encoded again is refused).  Prints one
table: B3 P/R/F1 (metrics.b3), V-measure homogeneity/completeness/V (metrics.v_measure) and ARI
(metrics.ari), in percent; writes the rows to metrics.json in the first directory (or --out).
"""
import argparse
import os
import time

import numpy as np

from data import DataError
from estimate_k import estimate_k, k_range, normalise, scan_ks, type_pairs_of
from metrics import b3, score
from model import kmeans, lda_map
from rundir import Log, check_source, data_dir, fail, load_meta, load_npy, save_json

ROW_NAMES = {"encode": "frozen encoder", "siamese": "Siamese features", "cluster": "final features"}


def type_pairs_held_to(type_pair, k):
    """The K - 1 largest type pairs as their own clusters and all the other type pairs as one cluster
    (ties in size: the lower type-pair id first); the type pairs as they are where there are at most K."""
    type_pair = np.asarray(type_pair)
    ids, counts = np.unique(type_pair, return_counts=True)
    if len(ids) <= k:
        return type_pair.copy()
    keep = ids[np.lexsort((ids, -counts))[:k - 1]]
    out = np.full(type_pair.shape, k - 1, dtype=np.int64)  # the rest together
    for c, t in enumerate(keep):
        out[type_pair == t] = c
    return out


def features_of(d, n):
    path = os.path.join(d, "features.npy")
    return normalise(load_npy(path, n)) if os.path.exists(path) else None


def auto_k(runs, n, seed, log, type_pair):
    """--k auto: the clustering head's K (the width of the first probs.npy), or else K estimated
    without labels from the first directory's features (estimate_k.estimate_k; `type_pair`: the data's
    type pairs or None)."""
    for d in runs:
        if os.path.exists(os.path.join(d, "probs.npy")):
            k = int(load_npy(os.path.join(d, "probs.npy"), n).shape[1])
            log(f"--k auto: K = {k}, the clustering head's in {d}")
            return k
    for d in runs:
        f = features_of(d, n)
        if f is not None:
            k, _ = estimate_k(f, seed=seed, log=log, type_pair=type_pair)
            log(f"--k auto: K = {k}, estimated without labels from {d}/features.npy")
            return k
    raise DataError(f"--k auto: none of {runs} holds probs.npy or features.npy")


def seed_mean_b3(labels, x, k, seed, restarts=3, seeds=3):
    """k-means B3 F1 at K = k, the mean over `seeds` k-means seeds (seed, seed + 1, ...) of `restarts`
    restarts each: one k-means run moves B3 F1 by up to 8 points from seed to seed."""
    return float(np.mean([b3(labels, kmeans(x, k, seed + s, restarts=restarts))[2] for s in range(seeds)]))


def k_scan(f, labels, seed, log, restarts=3, seeds=3, type_pair=None, train=None, train_types=None):
    """For one features matrix: K estimated without labels, the gold K, and k-means B3 F1 at the estimate,
    at 10, at the gold K and at every K of the default range (estimate_k.k_range: 10..100, clipped to the
    instances; the type floor does not narrow it), each the mean over `seeds` k-means seeds of `restarts`
    restarts (one k-means run moves B3 F1 by up to 8 points from seed to seed, and the best of 44 single
    runs would be the luckiest draw): the oracle's best of that curve reads the labels (evaluation only).
    `train`: the same kind of features of the training part (or None); K is then also estimated on them,
    as train_cluster.py --k auto estimates it, and B3 F1 of `f` scored at that K.
    `type_pair`, `train_types`: the type pairs of the two parts (or None), for the estimate's type floor."""
    t0 = time.time()
    k_est, curve = estimate_k(f, seed=seed, log=log, type_pair=type_pair)
    seconds = round(time.time() - t0, 1)
    log(f"K = {k_est} estimated without labels in {seconds} s")
    k_train = None
    if train is not None:
        k_train, _ = estimate_k(train, seed=seed, log=log, type_pair=train_types)
        log(f"K = {k_train} estimated without labels on the training part's {len(train)} instances")
    gold = len(np.unique(labels))
    scanned = scan_ks(*k_range(len(f))[:2])  # the oracle's range: the estimate's before any type floor
    ks = sorted(set(scanned) | {k for k in (k_est, 10, gold, k_train) if k is not None and k <= len(f)})
    b3_at = {k: seed_mean_b3(labels, f, k, seed, restarts, seeds) for k in ks}
    best = max(scanned, key=lambda k: (b3_at[k], -k))
    return {"k_estimated": k_est, "k_gold": gold, "b3_f1_at_estimate": b3_at[k_est],
            "k_estimated_on_train": k_train, "b3_f1_at_train_estimate": b3_at.get(k_train),
            "b3_f1_at_10": b3_at.get(10),
            "b3_f1_at_gold": b3_at.get(gold), "oracle_best_b3_f1": b3_at[best], "oracle_best_k": best,
            "k_range": [scanned[0], scanned[-1]], "criterion": curve["criterion"], "scan_restarts": restarts,
            "scan_seeds": seeds, "estimate_seconds": seconds, "k_curve": curve,
            "b3_f1_by_k": {str(k): v for k, v in sorted(b3_at.items())}}


def train_run_of(d, meta, lda_from):
    """The directory of the training part's features of the same kind as `d`'s: a predict.py output's
    model (train_siamese.py's or train_cluster.py's, whose features.npy is of the data it trained on); for
    an encoded directory, --lda-from TRAIN where given; else None."""
    if meta["stage"] == "predict":
        return meta["model"]
    if meta["stage"] == "encode" and lda_from and os.path.realpath(lda_from) != os.path.realpath(d):
        return lda_from
    return None


def train_features_of(d, meta, lda_from):
    """The training part's features of the same kind as `d`'s (train_run_of), L2-normalised, or None."""
    model = train_run_of(d, meta, lda_from)
    path = model and os.path.join(model, "features.npy")
    return normalise(load_npy(path, load_meta(model)["n_instances"])) if path and os.path.exists(path) else None


def lda_features(x, fit):
    """Rows of x mapped by model.lda_map's (mean, map), L2-normalised for k-means."""
    mean, m = fit
    return normalise((x - mean) @ m)


def context_lda_row(train, data, n, k, seed, log):
    """("k-means, frozen + context LDA", clusters), or None with a line saying why where TRAIN has no
    context group of two instances."""
    f = features_of(data, n)
    if f is None:
        raise DataError(f"--lda-from: {data} has no features.npy (encode.py --features)")
    train_meta = load_meta(train, ("encode",))
    paths = [os.path.join(train, name) for name in ("features.npy", "context_key.npy")]
    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"--lda-from: no {path} (encode.py --features, by this version)")
    x = normalise(load_npy(paths[0], train_meta["n_instances"]))
    if x.shape[1] != f.shape[1]:
        raise DataError(f"--lda-from: {paths[0]} has {x.shape[1]} columns, {data}'s features {f.shape[1]}")
    try:
        fit = lda_map(x, load_npy(paths[1], len(x)))
    except DataError as e:
        log(f"--lda-from {train}: {e}; no context LDA row")
        return None
    log(f"context LDA fitted without labels on {len(x)} frozen features of {train} ({fit[1].shape[1]} directions)")
    return "k-means, frozen + context LDA", kmeans(lda_features(f, fit), k, seed)


def nearest_centroid(train, assign, f):
    """Rows of f (L2-normalised) assigned to the nearest centroid (squared Euclidean distance, as in
    model.kmeans) of the training features `train` clustered as `assign`: k-means fitted the way the
    clustering head is, to the training part, and then applied to this part."""
    centres = np.stack([train[assign == c].mean(0) for c in np.unique(assign)])
    return ((centres * centres).sum(1)[None, :] - 2 * f @ centres.T).argmin(1)


def rows_of(d, k, seed, n):
    """(name, predicted clusters) for each clustering held by directory `d`."""
    _, meta = data_dir(d)
    stage = meta.get("model_stage", meta["stage"])  # predict.py's outputs are named by their model
    what = ROW_NAMES.get(stage, stage)
    rows = []
    if os.path.exists(os.path.join(d, "pred.npy")):
        rows.append(("clustering head (the method)", np.asarray(load_npy(os.path.join(d, "pred.npy"), n))))
    f = features_of(d, n)
    if f is not None:
        rows.append((f"k-means, {what}", kmeans(f, k, seed)))
        train = train_features_of(d, meta, None)  # a predict.py output's model's features, else None
        if train is not None and len(train) >= k:
            rows.append((f"training-part k-means, {what}", nearest_centroid(train, kmeans(train, k, seed), f)))
    if not rows:
        raise DataError(f"{d}: holds neither pred.npy nor features.npy")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="directories holding pred.npy and/or features.npy")
    ap.add_argument("--k", default="10", help="clusters for k-means and for 'type pairs held to K' (papers: 10); "
                    "auto: the clustering head's K, or estimated without labels (estimate_k.py)")
    ap.add_argument("--k-scan", action="store_true", help="also the table of K estimated without labels "
                    "against the gold K and the oracle's best K, for each features.npy")
    ap.add_argument("--lda-from", metavar="TRAIN", help="encoded training directory: adds the reference row "
                    "'k-means, frozen + context LDA' (no labels; see above), and with --k-scan K estimated on "
                    "its frozen features")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON file for the rows (default: metrics.json in the first directory)")
    args = ap.parse_args()
    log = Log("evaluate")

    sources = [data_dir(d) for d in args.runs]
    data = {os.path.realpath(source) for source, _ in sources}
    if len(data) > 1:
        raise DataError(f"the directories are outputs on different data: {sorted(data)}")
    data = data.pop()
    meta = load_meta(data, ("encode",))
    for d, (_, m) in zip(args.runs, sources):
        if m["stage"] != "encode":
            check_source(m, meta, d)
    n = meta["n_instances"]
    if not os.path.exists(os.path.join(data, "labels.npy")):
        raise DataError(f"{data}: no labels.npy: its data has no gold relations to score against")
    labels = np.asarray(load_npy(os.path.join(data, "labels.npy"), n))
    log(f"read gold relations of {n} instances ({len(np.unique(labels))} relations) from {data}")

    type_pair = type_pairs_of(data)
    if args.k == "auto":
        k = auto_k(args.runs, n, args.seed, log, type_pair)
    else:
        try:
            k = int(args.k)
        except ValueError:
            raise DataError(f"--k {args.k!r}: give a number of clusters or auto") from None
    rows = []
    if type_pair is not None:
        rows.append(("one cluster per type pair", type_pair))
        if k >= 1:
            rows.append(("type pairs held to K", type_pairs_held_to(type_pair, k)))
    for d in args.runs:
        rows += rows_of(d, k, args.seed, n)
    if args.lda_from:
        row = context_lda_row(args.lda_from, data, n, k, args.seed, log)
        rows += [row] if row else []

    results = []
    w = max(34, *(len(name) for name, _ in rows))
    print(f"\n{'':{w}} {'K':>4} | {'B3 P':>5} {'B3 R':>5} {'B3 F1':>5} | {'V hom':>5} {'V com':>5} "
          f"{'V F1':>5} | {'ARI':>5}")
    for name, pred in rows:
        s = score(labels, pred)
        results.append({"name": name, **s})
        print(f"{name:{w}} {s['n_clusters']:4d} | {100 * s['b3_precision']:5.1f} {100 * s['b3_recall']:5.1f} "
              f"{100 * s['b3_f1']:5.1f} | {100 * s['v_homogeneity']:5.1f} {100 * s['v_completeness']:5.1f} "
              f"{100 * s['v_measure']:5.1f} | {100 * s['ari']:5.1f}")
    print()
    scans = []
    if args.k_scan:
        for d, (_, m) in zip(args.runs, sources):
            f = features_of(d, n)
            if f is None:
                continue
            stage = m.get("model_stage", m["stage"])
            train = train_features_of(d, m, args.lda_from)
            train_types = type_pairs_of(train_run_of(d, m, args.lda_from)) if train is not None else None
            scans.append({"name": f"k-means, {ROW_NAMES.get(stage, stage)}", "dir": d,
                          **k_scan(f, labels, args.seed, log, type_pair=type_pair, train=train,
                                   train_types=train_types)})
        print("K without labels: estimated on each features.npy (the estimate reads no labels), and on the same "
              "kind of features of the training part where known (train est); k-means B3 F1 at those K, at 10, "
              "at the gold K, and the best over the default range (10..100), an ORACLE (reads the labels); each "
              "the mean over 3 k-means seeds")
        print(f"{'':34} {'K est':>5} {'train est':>9} {'gold':>4} | {'at est':>6} {'at train est':>12} {'at 10':>6} "
              f"{'at gold':>7} | {'oracle best (K)':>15}")
        for s in scans:
            cell = lambda v: f"{100 * v:.1f}" if v is not None else "-"
            print(f"{s['name']:34} {s['k_estimated']:5d} {s['k_estimated_on_train'] or '-':>9} {s['k_gold']:4d} | "
                  f"{cell(s['b3_f1_at_estimate']):>6} {cell(s['b3_f1_at_train_estimate']):>12} "
                  f"{cell(s['b3_f1_at_10']):>6} {cell(s['b3_f1_at_gold']):>7} | "
                  f"{cell(s['oracle_best_b3_f1']):>8} ({s['oracle_best_k']})")
        print()
    out = args.out or os.path.join(args.runs[0], "metrics.json")
    save_json(out, {"data": data, "k": k, "n": n, "rows": results, **({"k_scan": scans} if args.k_scan else {})})
    log.done(out)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
