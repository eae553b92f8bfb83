"""Stage 6: score clusterings against the gold relations (the only stage that reads labels.npy).

    python evaluate.py runs/default/test_cluster runs/default/test_siamese runs/default/test --k 10

Each directory given is an encoded data directory (encode.py) or a model's output on one
(train_siamese.py, train_cluster.py, predict.py: their meta.json names the data directory).  It gives
one row per clustering it holds:
    pred.npy       the clustering head's clusters, scored as they are;
    features.npy   clustered with k-means (K = --k) on L2-normalised features.
Beside them, whenever the data has entity types, the reference point "one cluster per (head type,
tail type) pair".  All directories must be outputs on the same data as it is now (the fingerprints
in their meta.json are checked: one made before the data was encoded again is refused).  Prints one
table: B3 P/R/F1 (metrics.b3), V-measure homogeneity/completeness/V (metrics.v_measure) and ARI
(metrics.ari), in percent; writes the rows to metrics.json in the first directory (or --out).
"""
import argparse
import os

import numpy as np

from data import DataError
from metrics import score
from model import kmeans
from rundir import Log, check_source, fail, load_meta, load_npy, save_json

ROW_NAMES = {"encode": "frozen encoder", "siamese": "Siamese features", "cluster": "final features"}


def data_dir(d):
    """The encoded data directory behind `d` (itself, for an encoded directory)."""
    meta = load_meta(d)
    return (d if meta["stage"] == "encode" else meta["data"]), meta


def rows_of(d, k, seed, n):
    """(name, predicted clusters) for each clustering held by directory `d`."""
    _, meta = data_dir(d)
    stage = meta.get("model_stage", meta["stage"])  # predict.py's outputs are named by their model
    what = ROW_NAMES.get(stage, stage)
    rows = []
    if os.path.exists(os.path.join(d, "pred.npy")):
        rows.append(("clustering head (the method)", np.asarray(load_npy(os.path.join(d, "pred.npy"), n))))
    if os.path.exists(os.path.join(d, "features.npy")):
        f = np.asarray(load_npy(os.path.join(d, "features.npy"), n), np.float32)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        rows.append((f"k-means, {what}", kmeans(f, k, seed)))
    if not rows:
        raise DataError(f"{d}: holds neither pred.npy nor features.npy")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="directories holding pred.npy and/or features.npy")
    ap.add_argument("--k", type=int, default=10, help="clusters for k-means (papers: 10)")
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

    rows = []
    if os.path.exists(os.path.join(data, "type_pair.npy")):
        rows.append(("one cluster per type pair", np.asarray(load_npy(os.path.join(data, "type_pair.npy"), n))))
    for d in args.runs:
        rows += rows_of(d, args.k, args.seed, n)

    results = []
    print(f"\n{'':34} {'K':>4} | {'B3 P':>5} {'B3 R':>5} {'B3 F1':>5} | {'V hom':>5} {'V com':>5} "
          f"{'V F1':>5} | {'ARI':>5}")
    for name, pred in rows:
        s = score(labels, pred)
        results.append({"name": name, **s})
        print(f"{name:34} {s['n_clusters']:4d} | {100 * s['b3_precision']:5.1f} {100 * s['b3_recall']:5.1f} "
              f"{100 * s['b3_f1']:5.1f} | {100 * s['v_homogeneity']:5.1f} {100 * s['v_completeness']:5.1f} "
              f"{100 * s['v_measure']:5.1f} | {100 * s['ari']:5.1f}")
    print()
    out = args.out or os.path.join(args.runs[0], "metrics.json")
    save_json(out, {"data": data, "k": args.k, "n": n, "rows": results})
    log.done(out)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
