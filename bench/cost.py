"""Cost curve: seconds and peak memory of every stage against the number of instances N, fitted and
extrapolated to a million; and neighbour mining at scale, exact and approximate.

    python bench/cost.py                  # N = 1,000, 10,000, 100,000: hours on 2 CPU cores
    python bench/cost.py --sizes 500 1000 3000 10000 --train-max 1000 --mine-sizes    # about 10 minutes
    python bench/cost.py --sizes --mine-from runs/x/features.npy --mine-sizes 100000 1000000 --out DIR

1. The stages.  Real records: --source (default fewrel_val_wiki.json, 11,200 sentences, in --data-dir:
   ../shared/data, else data/real), drawn with replacement (seed 0) to N records, encoded at
   --max-length.  For each N: encode.py --features, train_siamese.py and train_cluster.py (one epoch
   each, at N <= --train-max only: an epoch of 100,000 takes hours on 2 cores), mine_neighbors.py (exact,
   on the frozen features at every N, the widest the pipeline mines (1,536 with MiniLM); with the context map
   the Siamese features that the method mines are 64 wide),
   and predict.py (the clustering model of the smallest N applied to this N's data).  Every stage is a
   child process of its own: its time is its CPU time (user + system, start-up included, from os.wait4;
   on one thread, OMP_NUM_THREADS=1, the wall time it takes alone on an idle core, whatever else the
   machine runs; the wall time is in cost.json), its memory its peak resident set (ru_maxrss).  The
   stages run with --precision.
2. The fit: seconds = a + b N^p by least squares over the measured N, with p = 1 for encoding,
   training and prediction and p = 2 for the exact search, extrapolated to the N not measured and to
   1,000,000; beside it, the exponent of a free least-squares fit of log seconds on log N (start-up
   pulls it below p when the N are small).  Every figure in the table says whether it was measured.
3. Mining at scale: unit rows made from the distinct rows of --mine-from (default: the frozen encoder's
   features of the largest N): each row is a real row moved a random part (0 to 1/2) of the way towards one of its 20
   nearest real rows (distinct rows on the data's own neighbourhoods, not random vectors, which are the
   worst case of an inverted file).  At each of --mine-sizes, in a child process that reads them as
   mine_neighbors.py reads features.npy (memory-mapped): mine (exact, up to --exact-max) and mine_ivf
   (--nprobe), seconds and peak memory; and the recall@K of mine_ivf: the share of the exact K nearest
   neighbours of --recall-queries random rows (brute force) that it found.
Writes bench/out/cost.json and bench/out/cost.md (--out).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mine_neighbors import mine  # noqa: E402
from quality import default_data_dir, in_format_of, records_of  # noqa: E402  (bench/quality.py, beside this file)

GROWTH = {"encode": 1, "train_siamese": 1, "mine_neighbors": 2, "train_cluster": 1, "predict": 1}


def child(cmd):
    """Run `cmd`; {seconds: CPU time, wall_seconds, peak_mb: peak resident memory} of that child alone."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"bench/cost.py: {' '.join(map(str, cmd))} exited {os.waitstatus_to_exitcode(status)}")
    return {"seconds": round(usage.ru_utime + usage.ru_stime, 1), "wall_seconds": round(time.perf_counter() - t, 1),
            "peak_mb": round(usage.ru_maxrss / 1024)}  # Linux: kilobytes


def stage(*args):
    return child([sys.executable, *map(str, args)])


def resample(source, n, path):
    """n records drawn with replacement (seed 0) from a TACRED list or a FewRel object, written in its
    format; returns the number of records drawn from."""
    with open(source, encoding="utf-8") as f:
        raw = json.load(f)
    items = records_of(raw)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(in_format_of(raw, [items[i] for i in np.random.default_rng(0).integers(len(items), size=n)]), f)
    return len(items)


def run_stages(args, work):
    """CPU and wall seconds and peak MB of every stage at every N (the training stages up to --train-max)."""
    out = {}
    first = None
    for n in args.sizes:
        d = os.path.join(work, f"n{n}")
        os.makedirs(d, exist_ok=True)
        distinct = resample(args.source, n, os.path.join(d, "records.json"))
        enc = os.path.join(d, "encoded")
        like = ["--tokenizer-from", os.path.join(first, "encoded")] if first else []  # one marker vocabulary
        fig = {"encode": stage("encode.py", os.path.join(d, "records.json"), "--out", enc, "--features",
                               "--max-length", args.max_length, "--precision", args.precision, "--quiet", *like)}
        if n <= args.train_max:
            common = ["--epochs", 1, "--precision", args.precision, "--quiet"]
            fig["train_siamese"] = stage("train_siamese.py", "--data", enc, "--out", os.path.join(d, "siamese"),
                                         *common)
            stage("mine_neighbors.py", os.path.join(d, "siamese"))  # train_cluster.py's neighbours; not timed
            fig["train_cluster"] = stage("train_cluster.py", "--data", enc, "--init", os.path.join(d, "siamese"),
                                         "--out", os.path.join(d, "cluster"), *common)
        fig["mine_neighbors"] = stage("mine_neighbors.py", enc)  # the frozen features, as wide at every N
        first = first or d
        fig["predict"] = stage("predict.py", "--model", os.path.join(first, "cluster"), "--data", enc,
                               "--out", os.path.join(d, "predict"), "--precision", args.precision, "--quiet")
        with open(os.path.join(enc, "meta.json")) as f:
            meta = json.load(f)
        out[n] = {"instances": meta["n_instances"], "stages": fig}
        print(f"N = {n:,} ({meta['n_instances']:,} instances encoded, drawn from {distinct:,} records): "
              + ", ".join(f"{s} {f['seconds']} s / {f['peak_mb']} MB" for s, f in fig.items()), flush=True)
    return out, distinct


def fit(ns, seconds, p):
    """(a, b) of seconds = a + b N^p by least squares, and the free log-log exponent (None from one N)."""
    ns, seconds = np.asarray(ns, float), np.asarray(seconds, float)
    if len(ns) == 1:
        return (0.0, seconds[0] / ns[0] ** p), None
    a, b = np.linalg.lstsq(np.stack([np.ones_like(ns), ns ** p], 1), seconds, rcond=None)[0]
    if b <= 0 or a < 0:  # noise at small N: the origin-bound fit
        a, b = 0.0, float(np.sum(seconds * ns ** p) / np.sum(ns ** (2 * p)))
    return (float(a), float(b)), float(np.polyfit(np.log(ns), np.log(seconds), 1)[0])


def curve(measured, sizes, target):
    """For each stage: the fit and, at every N of `sizes` and at `target`, seconds measured or extrapolated."""
    table = {}
    for s, p in GROWTH.items():
        points = [(n, m["stages"][s]["seconds"]) for n, m in measured.items() if s in m["stages"]]
        (a, b), exponent = fit(*zip(*points), p)
        rows = {}
        for n in [*sizes, target]:
            got = measured.get(n, {}).get("stages", {}).get(s)
            rows[n] = {**got, "measured": True} if got else {"seconds": round(a + b * n ** p, 1), "measured": False}
        table[s] = {"growth": f"a + b N^{p}", "a": round(a, 2), "b": b, "loglog_exponent":
                    None if exponent is None else round(exponent, 2), "points": len(points), "at": rows}
    return table


# ----------------------------------------------------------------------------------------------
# 3. Mining at scale, each way in a child process: rows written once to disk, read memory-mapped

MINE_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from mine_neighbors import mine, mine_ivf
from rundir import load_npy
rows, how, k, nprobe, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
x = load_npy(rows)
idx, _ = mine(x, k) if how == "exact" else mine_ivf(x, k, nprobe=nprobe)
np.save(out, idx)
"""


def make_rows(base, n, path, seed=0):
    """n unit rows: real rows of `base` moved a random part (0..1/2) of the way to a near real row (module doc)."""
    near, _ = mine(base, 20)
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, base.shape[1]))
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        i = rng.integers(len(base), size=m)
        j = near[i, rng.integers(20, size=m)]
        x = base[i] + rng.uniform(0, 0.5, size=(m, 1)).astype(np.float32) * (base[j] - base[i])
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out


def exact_rows(path, queries, k):
    """Exact K nearest neighbours (not itself) of the rows `queries` among all rows of `path`, by brute force."""
    x = np.load(path, mmap_mode="r", allow_pickle=False)
    q = torch.from_numpy(np.array(x[queries]))
    best_sims = torch.full((len(queries), k), -float("inf"))
    best_idx = torch.zeros((len(queries), k), dtype=torch.int64)
    for s in range(0, len(x), 100_000):
        sims = q @ torch.from_numpy(np.array(x[s:s + 100_000])).T
        own = (queries >= s) & (queries < s + sims.shape[1])
        sims[np.flatnonzero(own), queries[own] - s] = -float("inf")
        best_sims, pos = torch.cat([best_sims, sims], 1).topk(k, dim=1)
        best_idx = torch.cat([best_idx, torch.arange(s, s + sims.shape[1]).expand(len(queries), -1)], 1).gather(1, pos)
    return best_idx.numpy()


def mine_at_scale(args, work):
    base = np.unique(np.load(args.mine_from, mmap_mode="r", allow_pickle=False).astype(np.float32), axis=0)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    out = {}
    for n in args.mine_sizes:
        path = os.path.join(work, "rows.npy")
        make_rows(base, n, path)
        queries = np.sort(np.random.default_rng(1).choice(n, min(n, args.recall_queries), replace=False))
        truth = exact_rows(path, queries, args.k)
        fig = {}
        for how in ("exact", "ivf"):
            if how == "exact" and n > args.exact_max:
                continue
            found = os.path.join(work, f"found_{how}.npy")
            fig[how] = child([sys.executable, "-c", MINE_CHILD, ROOT, path, how, str(args.k), str(args.nprobe), found])
            idx = np.load(found, allow_pickle=False)[queries]
            fig[how][f"recall_at_{args.k}"] = round(float(np.mean([len(set(a) & set(b)) / args.k
                                                                   for a, b in zip(idx, truth)])), 4)
            print(f"mining {n:,} x {base.shape[1]}: {how} {fig[how]}", flush=True)
        out[n] = fig
        os.remove(path)
    return {"source": args.mine_from, "base_rows": len(base), "dim": base.shape[1], "nprobe": args.nprobe,
            "nlist": "4 sqrt(N)", "at": out}


# ----------------------------------------------------------------------------------------------


def duration(seconds):
    if seconds < 600:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 36_000 else f"{seconds / 3600:.0f} h"


def markdown(args, table, scale, distinct, cpu):
    lines = []
    if table:
        lines += stage_table(args, table, distinct, cpu)
    if scale:
        lines += ["", f"**Mining at scale** ({cpu}, {os.environ.get('OMP_NUM_THREADS', 'all')} threads; {scale['dim']} "
                  f"dims; rows made from the {scale['base_rows']:,} distinct rows of {scale['source']}, module "
                  f"docstring; --index ivf with nlist 4 sqrt(N), nprobe {scale['nprobe']}; recall on "
                  f"{args.recall_queries:,} random rows against brute force); CPU seconds (wall seconds), peak MB", "",
                  f"| N | exact | ivf | ivf recall@{args.k} |", "|---|---|---|---|"]
        for n, f in scale["at"].items():
            cell = {how: f"{g['seconds']:,} s ({g['wall_seconds']:,} s), {g['peak_mb']:,} MB" for how, g in f.items()}
            recall = f["ivf"][f"recall_at_{args.k}"]
            lines.append(f"| {n:,} | {cell.get('exact', 'not run')} | {cell['ivf']} | {recall} |")
    return "\n".join(lines) + "\n"


def stage_table(args, table, distinct, cpu):
    sizes = [*args.sizes, 1_000_000]
    lines = [f"Data: {os.path.basename(args.source)} ({distinct:,} records) drawn with replacement to N records, "
             f"max length {args.max_length} subword tokens, precision {args.precision}; {cpu}, "
             f"{os.environ.get('OMP_NUM_THREADS', 'all')} threads.  CPU seconds per stage (one epoch for the training "
             f"stages), start-up included; *italic*: extrapolated from the fit, not measured; peak memory in MB "
             f"where measured.", "",
             "| stage | growth fitted | log-log exponent | " + " | ".join(f"N = {n:,}" for n in sizes) + " |",
             "|---" * (len(sizes) + 3) + "|"]
    for s, t in table.items():
        cells = [f"{duration(r['seconds'])} ({r['peak_mb']:,} MB)" if r["measured"] else f"*{duration(r['seconds'])}*"
                 for r in (t["at"][n] for n in sizes)]
        lines.append(f"| {s} | {t['a']} + {t['b']:.3g} N^{GROWTH[s]} | {t['loglog_exponent']} | "
                     + " | ".join(cells) + " |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--source", help="records to draw from (default: fewrel_val_wiki.json in --data-dir)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10_000, 100_000],
                    help="N of the stages' curve (none: mining at scale only, from --mine-from)")
    ap.add_argument("--train-max", type=int, default=10_000, help="largest N at which the training stages run")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--mine-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--mine-from", metavar="FEATURES", help="features.npy of real rows for mining at scale "
                    "(default: the frozen features of the largest N)")
    ap.add_argument("--exact-max", type=int, default=100_000, help="largest N of the exact search at scale")
    ap.add_argument("--k", type=int, default=20, help="neighbours (mine_neighbors.py's default)")
    ap.add_argument("--nprobe", type=int, default=16, help="mine_ivf's cells searched (mine_neighbors.py's default)")
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    args = ap.parse_args()
    args.source = args.source or os.path.join(args.data_dir, "fewrel_val_wiki.json")
    if not os.path.exists(args.source):
        raise SystemExit(f"bench/cost.py: {args.source} is absent (python data/prepare.py fewrel, or --source FILE)")
    args.sizes = sorted(args.sizes)
    if args.sizes and args.train_max < args.sizes[0]:
        raise SystemExit(f"bench/cost.py: --train-max {args.train_max} is below the smallest N: predict.py needs a "
                         f"model trained at the smallest N")
    t0 = time.time()
    work = os.path.join(args.out, "cost_work")
    os.makedirs(work, exist_ok=True)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "CPU")
    cpu = f"{cpu}, {os.cpu_count()} CPUs"

    measured, distinct = run_stages(args, work) if args.sizes else ({}, None)
    table = curve(measured, args.sizes, 1_000_000) if args.sizes else None
    if args.sizes and not args.mine_from:
        args.mine_from = os.path.join(work, f"n{args.sizes[-1]}", "encoded", "features.npy")
    scale = mine_at_scale(args, work) if args.mine_sizes and args.mine_from else None

    md = markdown(args, table, scale, distinct, cpu) + f"\nTotal wall time {time.time() - t0:.0f} s.\n"
    with open(os.path.join(args.out, "cost.json"), "w") as f:
        json.dump({"machine": cpu, "settings": vars(args), "source_records": distinct,
                   "measured": {str(n): m for n, m in measured.items()}, "curve": table, "mining_at_scale": scale},
                  f, indent=1, default=str)
    with open(os.path.join(args.out, "cost.md"), "w") as f:
        f.write(md)
    print("\n" + md)


if __name__ == "__main__":
    main()
