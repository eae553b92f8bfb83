"""Stage 3: mine the K nearest neighbours of every instance in feature space (paper section 3.3).

    python mine_neighbors.py runs/default/siamese --k 20

Reads features.npy of a directory (the Siamese stage's), L2-normalises it and finds, for every
instance, the exact top-K cosine neighbours other than itself.  The search runs over blocks of
--chunk rows, so memory stays O(chunk x N) however large N is (`mine`, which train_cluster.py also
calls to re-mine as its features improve).

Writes into the same directory:
    neighbors.npy        int32 [N, K]    neighbour indices, nearest first
    neighbor_sims.npy  float32 [N, K]    their cosine similarities
    neighbors.json                       K and the fingerprint of the features they were mined from;
                                         removed first and written last, like a stage's meta.json
Diagnostic only: when the data has gold labels it prints neighbour purity (the share of neighbours
with the instance's own relation).  Nothing downstream reads it.
"""
import argparse
import os

import numpy as np
import torch

from data import DataError
from rundir import Log, check_source, fail, load_meta, load_npy, remove_temporaries, save_json, save_npy


def mine(features, k, chunk=1024):
    """Exact top-k cosine neighbours of each row among the other rows: (indices int32, sims float32)."""
    x = torch.nn.functional.normalize(torch.from_numpy(np.array(features, dtype=np.float32)), dim=1)
    n = x.shape[0]
    if not 1 <= k < n:
        raise DataError(f"neighbour mining: K = {k} needs at least K + 1 instances, there are {n}")
    if chunk < 1:
        raise DataError(f"neighbour mining: --chunk {chunk}: must be at least 1")
    idx = np.empty((n, k), np.int32)
    sims = np.empty((n, k), np.float32)
    for start in range(0, n, chunk):
        s = x[start:start + chunk] @ x.T
        rows = torch.arange(s.shape[0])
        s[rows, rows + start] = -float("inf")  # not its own neighbour
        top = s.topk(k, dim=1)
        idx[start:start + chunk] = top.indices.numpy()
        sims[start:start + chunk] = top.values.numpy()
    return idx, sims


def purity(neighbors, labels):
    """Share of neighbours that have the instance's gold relation: a diagnostic of feature quality."""
    labels = np.asarray(labels)
    return float((labels[neighbors] == labels[:, None]).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="directory holding features.npy and meta.json")
    ap.add_argument("--k", type=int, default=20, help="neighbours per instance")
    ap.add_argument("--chunk", type=int, default=1024, help="rows per block of the search (bench/speed.py)")
    args = ap.parse_args()
    log = Log("mine")
    meta = load_meta(args.run)
    feats = load_npy(os.path.join(args.run, "features.npy"), meta["n_instances"])
    log(f"read features {feats.shape} from {args.run}")
    data = args.run if meta["stage"] == "encode" else meta["data"]
    labels = None
    if os.path.exists(os.path.join(data, "labels.npy")):  # for the diagnostic only
        if data != args.run:
            check_source(meta, load_meta(data, ("encode",)), args.run)
        labels = load_npy(os.path.join(data, "labels.npy"), meta["n_instances"])
    idx, sims = mine(feats, args.k, args.chunk)
    if os.path.exists(os.path.join(args.run, "neighbors.json")):
        os.remove(os.path.join(args.run, "neighbors.json"))
    remove_temporaries(args.run)
    save_npy(os.path.join(args.run, "neighbors.npy"), idx)
    save_npy(os.path.join(args.run, "neighbor_sims.npy"), sims)
    save_json(os.path.join(args.run, "neighbors.json"), {"k": args.k, "features_fingerprint": meta["fingerprint"]})
    log(f"mean cosine similarity to the {args.k} neighbours: {sims.mean():.3f}")
    if labels is not None:
        log(f"diagnostic (reads gold labels, used by nothing downstream): neighbour purity {purity(idx, labels):.3f}")
    log.done(f"neighbors.npy {idx.shape}, neighbor_sims.npy and neighbors.json to {args.run}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
