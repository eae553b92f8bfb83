"""Stage 3: mine the K nearest neighbours of every instance in feature space (paper section 3.3).

    python mine_neighbors.py runs/default/siamese --k 20

Reads features.npy of a directory (the Siamese stage's), L2-normalises it and finds, for every
instance, the exact top-K cosine neighbours other than itself.  The search runs over blocks of
--chunk rows, so memory stays O(chunk x N) however large N is (`mine`, which train_cluster.py also
calls to re-mine as its features improve).  Its time grows as N squared: 100,000 instances take
minutes, a million hours on 2 CPU cores (bench/cost.py).

--index ivf searches approximately instead (`mine_ivf`), an inverted file as in faiss's IndexIVFFlat:
k-means (10 iterations on 16 random rows per cell) splits the unit sphere into --nlist cells (default
4 sqrt(N)), each instance belongs to the cell of its nearest centroid, and it searches exactly among
the members of the --nprobe cells whose centroids are nearest to it, about nprobe / nlist of the data.
The search runs cell by cell, as one matrix product of the instances that probe the cell with the
cell's members, which keeps the CPU's matrix units busy; nothing beyond torch is needed.
README, "Speed", has its recall against the exact search and its time at a million.

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
from rundir import Log, check_source, data_dir, fail, load_meta, load_npy, remove_temporaries, save_json, save_npy


def mine(features, k, chunk=1024, among=None):
    """Exact top-k cosine neighbours of each row among the other rows: (indices int32, sims float32).
    With `among` (float [M, D]), of each row among the rows of `among` instead, itself not left out:
    predict.py's nearest training instances of a new instance, for the kNN vote (model.knn_vote)."""
    def unit(a):
        return torch.nn.functional.normalize(torch.from_numpy(np.array(a, dtype=np.float32)), dim=1)
    x = unit(features)
    base = x if among is None else unit(among)
    n, m = x.shape[0], base.shape[0]
    if among is None and not 1 <= k < n:
        raise DataError(f"neighbour mining: K = {k} needs at least K + 1 instances, there are {n}")
    if among is not None and not 1 <= k <= m:
        raise DataError(f"neighbour mining: K = {k} neighbours among {m} instances")
    if chunk < 1:
        raise DataError(f"neighbour mining: --chunk {chunk}: must be at least 1")
    idx = np.empty((n, k), np.int32)
    sims = np.empty((n, k), np.float32)
    for start in range(0, n, chunk):
        s = x[start:start + chunk] @ base.T
        if among is None:
            rows = torch.arange(s.shape[0])
            s[rows, rows + start] = -float("inf")  # not its own neighbour
        top = s.topk(k, dim=1)
        idx[start:start + chunk] = top.indices.numpy()
        sims[start:start + chunk] = top.values.numpy()
    return idx, sims


def mine_ivf(features, k, nlist=None, nprobe=16, seed=0, block=1 << 25):
    """Approximate top-k cosine neighbours of each row among the other rows, by an inverted file
    (module docstring): (indices int32, sims float32), nearest first.  `block` bounds the entries of
    one similarity matrix, so memory stays a copy of the features plus O(block)."""
    x = torch.from_numpy(np.array(features, dtype=np.float32))
    n = x.shape[0]
    if not 1 <= k < n:
        raise DataError(f"neighbour mining: K = {k} needs at least K + 1 instances, there are {n}")
    for start in range(0, n, 65536):  # in place, block by block: no second copy of a large matrix
        x[start:start + 65536] = torch.nn.functional.normalize(x[start:start + 65536], dim=1)
    nlist, nprobe = ivf_cells(n, nlist, nprobe)
    g = torch.Generator().manual_seed(seed)
    centroids = spherical_kmeans(x[torch.randperm(n, generator=g)[:16 * nlist]], nlist, g)
    probe = torch.cat([(x[s:s + 65536] @ centroids.T).topk(nprobe, dim=1).indices for s in range(0, n, 65536)])
    members_of = np.split(*by_cell(probe[:, 0].numpy(), nlist))  # each row belongs to its nearest cell
    queries_of = np.split(*by_cell(probe.flatten().numpy(), nlist))
    best_sims = torch.full((n, k), -float("inf"))
    best_idx = torch.full((n, k), -1, dtype=torch.int64)
    for members, queries in zip(members_of, queries_of):
        queries = queries // nprobe  # positions in probe.flatten() -> rows
        if len(members) == 0 or len(queries) == 0:
            continue
        m = torch.from_numpy(members)
        xm = x[m]
        step = max(1, block // len(members))
        for q in torch.from_numpy(queries).split(step):
            s = x[q] @ xm.T
            s[q[:, None] == m[None, :]] = -float("inf")  # not its own neighbour
            sims, pos = torch.cat([best_sims[q], s], 1).topk(k, dim=1)
            best_idx[q] = torch.cat([best_idx[q], m.expand(len(q), -1)], 1).gather(1, pos)
            best_sims[q] = sims
    if (best_idx < 0).any():
        raise DataError(f"neighbour mining: --nprobe {nprobe} of {nlist} cells holds fewer than K = {k} other "
                        f"instances for some; raise --nprobe or use --index exact")
    return best_idx.numpy().astype(np.int32), best_sims.numpy()


def ivf_cells(n, nlist=None, nprobe=16):
    """(cells, cells searched) of `mine_ivf` on n rows: --nlist (default 4 sqrt(N)) and --nprobe, at most n."""
    nlist = min(n, nlist or round(4 * n ** 0.5))
    return nlist, min(nprobe, nlist)


def by_cell(cells, nlist):
    """(positions sorted by cell, where each cell's run ends): np.split of the first by the second
    gives each cell's positions."""
    order = np.argsort(cells, kind="stable")
    return order, np.cumsum(np.bincount(cells, minlength=nlist))[:-1]


def spherical_kmeans(x, k, g, iters=10):
    """k unit centroids of the unit rows x: Lloyd's iterations on cosine similarity from k random rows."""
    centroids = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cat([(x[s:s + 65536] @ centroids.T).argmax(1) for s in range(0, x.shape[0], 65536)])
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = sums.norm(dim=1) > 0  # an emptied cell keeps its centroid
        centroids[filled] = torch.nn.functional.normalize(sums[filled], dim=1)
    return centroids


def purity(neighbors, labels):
    """Share of neighbours that have the instance's gold relation: a diagnostic of feature quality."""
    labels = np.asarray(labels)
    return float((labels[neighbors] == labels[:, None]).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="directory holding features.npy and meta.json")
    ap.add_argument("--k", type=int, default=20, help="neighbours per instance")
    ap.add_argument("--chunk", type=int, default=1024, help="rows per block of the exact search (bench/speed.py)")
    ap.add_argument("--index", choices=("exact", "ivf"), default="exact",
                    help="exact search, or the approximate inverted file (for hundreds of thousands of instances "
                         "and more; README, \"Speed\")")
    ap.add_argument("--nlist", type=int, help="--index ivf: cells (default 4 sqrt(N))")
    ap.add_argument("--nprobe", type=int, default=16, help="--index ivf: cells searched per instance")
    args = ap.parse_args()
    log = Log("mine")
    data, meta = data_dir(args.run)
    feats = load_npy(os.path.join(args.run, "features.npy"), meta["n_instances"])
    log(f"read features {feats.shape} from {args.run}")
    labels = None
    if os.path.exists(os.path.join(data, "labels.npy")):  # for the diagnostic only
        if data != args.run:
            check_source(meta, load_meta(data, ("encode",)), args.run)
        labels = load_npy(os.path.join(data, "labels.npy"), meta["n_instances"])
    ivf = {}
    if args.index == "exact":
        idx, sims = mine(feats, args.k, args.chunk)
    else:
        ivf = dict(zip(("nlist", "nprobe"), ivf_cells(len(feats), args.nlist, args.nprobe)))
        idx, sims = mine_ivf(feats, args.k, ivf["nlist"], ivf["nprobe"])
        log(f"approximate search (--index ivf): the nearest {ivf['nprobe']} of {ivf['nlist']} cells searched "
            f"for each instance")
    if os.path.exists(os.path.join(args.run, "neighbors.json")):
        os.remove(os.path.join(args.run, "neighbors.json"))
    remove_temporaries(args.run)
    save_npy(os.path.join(args.run, "neighbors.npy"), idx)
    save_npy(os.path.join(args.run, "neighbor_sims.npy"), sims)
    save_json(os.path.join(args.run, "neighbors.json"),
              {"k": args.k, "index": args.index, "features_fingerprint": meta["fingerprint"], **ivf})
    log(f"mean cosine similarity to the {args.k} neighbours: {sims.mean():.3f}")
    if labels is not None:
        log(f"diagnostic (reads gold labels, used by nothing downstream): neighbour purity {purity(idx, labels):.3f}")
    log.done(f"neighbors.npy {idx.shape}, neighbor_sims.npy and neighbors.json to {args.run}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
