"""Speed benchmark: every figure measured in one run, each speed-up a ratio to a baseline of the same run.

    python bench/speed.py                       # about 15 minutes on 2 CPU cores
    python bench/speed.py --records 300 --mine-rows 20000 --labels 1000000      # a quick look

1. Encoding: the project's encoder as encode.py --features runs it (training.represent over
   training.length_batches: length-sorted batches of 64, inference mode, fp32) against a plain Hugging Face
   loop (AutoModel on the same marked input_ids, file order, batches of 64 padded to the longest, fp32,
   torch.no_grad), on the first --records records of redocred_dev.json in --data-dir (../shared/data where
   it is there, else data/real: python data/prepare.py redocred) encoded at --max-length (128); only
   where neither holds it, data/train.json's short embedded sentences, and the tables say so.  Also the
   project's encoder with --precision bf16 (training.InPrecision), which is not the default (README,
   "Speed").  The passes alternate for --rounds rounds and the best round of each counts, so that a
   machine shared with other work slows all of them alike.
2. The machine's matmul peak: a 2048^3 fp32 and bf16 matmul, best of several; the encoder's achieved
   FLOP/s as a share of it.  FLOPs are counted analytically over the real (unpadded) tokens: per token
   and layer 2 (4 H^2 + 2 H I) for the projections and the feed-forward, plus 4 L H for attention.
3. Training: one Siamese step on random batches of 32 with the batch padded to its longest sentence
   (the code before length-sorted pieces) against training.encode_views, in fp32 and with --precision
   bf16, alternating; then
   train_siamese.py and train_cluster.py run for one epoch on the first --train-records instances,
   instances/s from the per-epoch seconds in their meta.json.
4. Neighbour mining: exact top-20 of --mine-rows x 768 random unit vectors with mine_neighbors.mine,
   time and peak memory (RSS of a child process), against faiss-cpu's IndexFlatIP when installed.
5. Metrics: metrics.score on --labels labels against scikit-learn's V-measure and ARI when installed.
Writes bench/out/speed.json and bench/out/speed.md (--out); the lines under the machine name the data, its
sentence lengths and --max-length, which every encoding and training figure depends on.
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from metrics import score  # noqa: E402
from quality import default_data_dir  # noqa: E402  (bench/quality.py, beside this file)
from model import URE, RelationEncoder  # noqa: E402
from rundir import load_encoded  # noqa: E402
from training import (InPrecision, build_encoder, encode_views, length_batches, load_tokenizer,  # noqa: E402
                      make_optimizer, represent, to_batch)

RESULTS = {}


def report(section, name, **figures):
    """Print one line of figures and keep them for speed.json."""
    RESULTS.setdefault(section, {})[name] = figures
    print(f"[{section}] {name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


def run(*cmd):
    subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


# ----------------------------------------------------------------------------------------------
# 1 and 2. Encoding and the matmul peak


def matmul_peak(dtype, n=2048, reps=5):
    """Best GFLOP/s of an n^3 matmul."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def encoder_flops(config, lengths):
    """Analytic FLOPs of a BERT forward over sentences of these lengths (no padding)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = lengths.astype(np.float64)
    return layers * float(np.sum(lengths * 2 * (4 * h * h + 2 * h * i) + 4 * lengths ** 2 * h))


def plain_loop(bert, arrays, batch_size=64):
    """The baseline: file order, batches padded to their longest, fp32, no_grad; returns padded tokens."""
    n, padded = len(arrays["lengths"]), 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            lengths = torch.from_numpy(arrays["lengths"][start:start + batch_size].astype(np.int64))
            width = int(lengths.max())
            ids = torch.from_numpy(arrays["input_ids"][start:start + batch_size, :width].astype(np.int64))
            bert(input_ids=ids, attention_mask=(torch.arange(width)[None] < lengths[:, None]).long())
            padded += ids.numel()
    return padded


def bench_encode(encoded, rounds):
    arrays, meta = load_encoded(encoded)
    arrays = {k: np.array(v) for k, v in arrays.items()}  # in memory, as encode.py has them
    tokenizer = load_tokenizer(os.path.join(encoded, "tokenizer"))
    torch.manual_seed(0)
    project = RelationEncoder(build_encoder(meta["model"], tokenizer, dropout=0.1))  # as encode.py --features
    from transformers import AutoModel
    plain = AutoModel.from_pretrained(meta["model"])
    plain.resize_token_embeddings(len(tokenizer))
    plain.eval()
    lengths = arrays["lengths"]
    n, tokens = len(lengths), int(lengths.sum())
    batches = length_batches(lengths, 64)
    sorted_padded = sum(len(b) * int(lengths[b].max()) for b in batches)

    def project_fp32():
        represent(project, arrays, batches)
        return sorted_padded

    def project_bf16():
        represent(InPrecision(project, "bf16"), arrays, batches)
        return sorted_padded

    passes = {"plain loop (baseline)": lambda: plain_loop(plain, arrays),
              "project, fp32 (default)": project_fp32, "project, --precision bf16": project_bf16}
    best, padded, peak = {}, {}, {"fp32": 0.0, "bf16": 0.0}
    for r in range(rounds):
        peak["fp32"] = max(peak["fp32"], matmul_peak(torch.float32))
        peak["bf16"] = max(peak["bf16"], matmul_peak(torch.bfloat16))
        for name, f in passes.items():
            t = time.perf_counter()
            padded[name] = f()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
            print(f"  round {r + 1}: {name} {n / (time.perf_counter() - t):.1f} sentences/s", flush=True)
    report("matmul", "2048^3 peak", fp32_gflops=round(peak["fp32"], 1), bf16_gflops=round(peak["bf16"], 1))
    flops = encoder_flops(plain.config, lengths)
    base = best["plain loop (baseline)"]
    for name, seconds in best.items():
        dtype = "bf16" if "bf16" in name else "fp32"
        report("encode", name, sentences_per_s=round(n / seconds, 1), tokens_per_s=round(tokens / seconds),
               speedup=round(base / seconds, 2), padding=round(padded[name] / tokens, 2),
               gflops=round(flops / seconds / 1e9, 1), share_of_peak=round(flops / seconds / 1e9 / peak[dtype], 2),
               peak_dtype=dtype)
    report("encode data", os.path.basename(meta["source"]), sentences=n, tokens=tokens,
           mean_length=round(tokens / n, 1), max_length=int(lengths.max()))


# ----------------------------------------------------------------------------------------------
# 3. Training


def bench_train_step(encoded, steps, batch_size=32):
    """One Siamese training step, the batch padded to its longest vs training.encode_views, alternating."""
    arrays, meta = load_encoded(encoded)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    torch.manual_seed(0)
    model = URE(build_encoder(meta["model"], load_tokenizer(os.path.join(encoded, "tokenizer")), 0.1), 768, 192,
                pooling=meta["pooling"])  # as train_siamese.py builds it for this data
    opt, _ = make_optimizer(model, 3e-5, 1e-3, 1000)
    model.train()

    def padded(b):
        _, batch = to_batch(arrays, b)
        return model.encoder(*(torch.cat([t, t]) for t in batch)).chunk(2)

    def pieces(b):
        return encode_views(model.encoder, arrays, b, views=2)

    def pieces_bf16(b):
        return encode_views(InPrecision(model.encoder, "bf16"), arrays, b, views=2)

    ways = {"whole batch padded to its longest (before)": padded, "length-sorted pieces (encode_views)": pieces,
            "length-sorted pieces, --precision bf16": pieces_bf16}
    times = {name: [] for name in ways}
    rng = np.random.default_rng(0)
    for i, b in enumerate(length_batches(arrays["lengths"], batch_size, rng)[:steps + 1]):
        for name, forward in ways.items():
            t = time.perf_counter()
            r1, r2 = forward(b)
            loss, _ = model.siamese(r1, r2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i > 0:  # the first step warms up
                times[name].append(time.perf_counter() - t)
    base = np.median(times["whole batch padded to its longest (before)"])
    for name, t in times.items():
        report("train step", name, instances_per_s=round(batch_size / np.median(t), 1),
               speedup=round(base / np.median(t), 2), steps=len(t))


def bench_training(encoded, work):
    """train_siamese.py and train_cluster.py, one epoch each, instances/s from their per-epoch seconds.
    Their share of the fp32 matmul peak counts a training step as 3 encoder forwards (the backward
    pass costs about two) of each encoded row: 2 views in the Siamese stage, plus a neighbour in the
    clustering stage; the heads are negligible."""
    from transformers import AutoConfig
    arrays, meta = load_encoded(encoded)
    forward = encoder_flops(AutoConfig.from_pretrained(meta["model"]), np.array(arrays["lengths"]))
    peak = RESULTS["matmul"]["2048^3 peak"]["fp32_gflops"] * 1e9
    siamese, cluster = os.path.join(work, "siamese"), os.path.join(work, "cluster")
    run("train_siamese.py", "--data", encoded, "--out", siamese, "--epochs", 1, "--quiet")
    run("mine_neighbors.py", siamese)
    run("train_cluster.py", "--data", encoded, "--init", siamese, "--out", cluster, "--epochs", 1, "--quiet")
    for name, d, rows in (("train_siamese.py", siamese, 2), ("train_cluster.py", cluster, 3)):
        with open(os.path.join(d, "meta.json")) as f:
            meta = json.load(f)
        seconds, n = meta["history"][0]["seconds"], meta["n_instances"]
        flops = 3 * rows * forward
        report("training", name, instances=n, epoch_seconds=seconds, instances_per_s=round(n / seconds, 1),
               share_of_peak=round(flops / seconds / peak, 2),
               minutes_per_10000_extrapolated=round(10000 / (n / seconds) / 60, 1),
               minutes_per_10000_at_peak=round(10000 * flops / n / peak / 60, 1))


# ----------------------------------------------------------------------------------------------
# 4. Neighbour mining, each way in a child process of its own, so that its peak memory is its own

MINE_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch

def peak_mb():  # this process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited at fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024

n, k, how, out = int(sys.argv[2]), 20, sys.argv[3], sys.argv[4]
x = torch.randn(n, 768, generator=torch.Generator().manual_seed(0))
x /= x.norm(dim=1, keepdim=True)
x = x.numpy()
before = peak_mb()
t = time.perf_counter()
if how == "mine":
    from mine_neighbors import mine
    idx, sims = mine(x, k)
else:
    import faiss
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k + 1)   # each row finds itself first
    keep = idx != np.arange(n)[:, None]
    idx, sims = (a[keep].reshape(n, k) if keep.sum() == n * k else a[:, 1:] for a in (idx, sims))
seconds = time.perf_counter() - t
np.save(out, sims.astype(np.float32))
print(json.dumps({"seconds": seconds, "rss_before_mb": before,
                  "peak_mb": peak_mb()}))
"""


def bench_mining(rows, work):
    ways = {"mine_neighbors.mine": "mine"}
    if importlib.util.find_spec("faiss"):
        ways["faiss IndexFlatIP (baseline)"] = "faiss"
    else:
        print("[mining] faiss-cpu is not installed (pip install faiss-cpu): mine_neighbors.mine alone")
    out, sims = {}, {}
    for name, how in ways.items():
        path = os.path.join(work, f"sims_{how}.npy")
        p = subprocess.run([sys.executable, "-c", MINE_CHILD, ROOT, str(rows), how, path], check=True,
                           capture_output=True, text=True)
        out[name], sims[name] = json.loads(p.stdout.strip().splitlines()[-1]), np.load(path, allow_pickle=False)
    base = out.get("faiss IndexFlatIP (baseline)", out["mine_neighbors.mine"])["seconds"]
    for name, o in out.items():
        report("mining", name, rows=rows, dim=768, k=20, seconds=round(o["seconds"], 1),
               vs_faiss=round(o["seconds"] / base, 2), peak_mb=round(o["peak_mb"]),
               data_mb_before=round(o["rss_before_mb"]))
    if len(sims) == 2:
        a, b = sims.values()
        report("mining", "agreement", largest_similarity_difference=float(np.abs(a - b).max()))


# ----------------------------------------------------------------------------------------------
# 5. Metrics


def best_of(f, reps=3):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        value = f()
        best = min(best, time.perf_counter() - t)
    return best, value


def bench_metrics(n):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 91, n)                                       # 91 relations, as redocred
    pred = np.where(rng.random(n) < 0.5, labels % 10, rng.integers(0, 10, n))  # 10 clusters, half right
    seconds, ours = best_of(lambda: score(labels, pred))
    figures = {"seconds": round(seconds, 2)}
    if importlib.util.find_spec("sklearn"):
        from sklearn.metrics import adjusted_rand_score, homogeneity_completeness_v_measure
        sk_seconds, (h, c, v, ari) = best_of(lambda: (*homogeneity_completeness_v_measure(labels, pred),
                                                      adjusted_rand_score(labels, pred)))
        figures.update(sklearn_seconds=round(sk_seconds, 2), vs_sklearn=round(seconds / sk_seconds, 2),
                       largest_difference=float(max(abs(ours["v_measure"] - v), abs(ours["ari"] - ari))))
        note = "metrics.score: B3 + V-measure + ARI; scikit-learn: V-measure + ARI (it has no B3)"
    else:
        note = "scikit-learn not installed: metrics.score alone"
    report("metrics", "metrics.score", labels=n, **figures, note=note)


# ----------------------------------------------------------------------------------------------


def markdown(cpu, data):
    lines = [f"Machine: {cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads.", "", data, ""]
    for section, rows in RESULTS.items():
        keys = list(dict.fromkeys(k for f in rows.values() for k in f))
        lines += [f"**{section}**", "", "| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(str(f.get(k, "")) for k in keys) + " |" for name, f in rows.items()]
        lines.append("")
    lines += ["**targets**", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in targets()]
    return "\n".join(lines) + "\n"


def targets():
    """(target, measured, met) for the figures this run has."""
    out = []
    enc = RESULTS.get("encode", {}).get("project, fp32 (default)")
    if enc:
        limit = 1 / RESULTS["encode"]["plain loop (baseline)"]["share_of_peak"]  # the project at 100 % of peak
        out.append(("encode >= 3x the plain loop",
                    f"{enc['speedup']}x (fp32 at 100 % of the matmul peak: {limit:.1f}x)", enc["speedup"] >= 3))
        out.append(("encode >= 40 % of the fp32 matmul peak", f"{100 * enc['share_of_peak']:.0f} %",
                    enc["share_of_peak"] >= 0.4))
    mining = RESULTS.get("mining", {}).get("mine_neighbors.mine")
    if mining:
        if "faiss IndexFlatIP (baseline)" in RESULTS["mining"]:
            out.append(("mining within 1.5x faiss-cpu", f"{mining['vs_faiss']}x", mining["vs_faiss"] <= 1.5))
        out.append(("mining peak memory < 2 GB", f"{mining['peak_mb']} MB", mining["peak_mb"] < 2048))
    metrics = RESULTS.get("metrics", {}).get("metrics.score")
    if metrics:
        out.append((f"metrics on {metrics['labels']:,} labels < 3 s", f"{metrics['seconds']} s",
                    metrics["seconds"] < 3))
        if "vs_sklearn" in metrics:
            out.append(("metrics no slower than scikit-learn", f"{metrics['vs_sklearn']}x",
                        metrics["vs_sklearn"] <= 1))
    siamese = RESULTS.get("training", {}).get("train_siamese.py")
    if siamese:
        out.append(("Siamese epoch over 10,000 instances < 5 min (extrapolated)",
                    f"{siamese['minutes_per_10000_extrapolated']} min "
                    f"(at 100 % of the fp32 peak: {siamese['minutes_per_10000_at_peak']} min)",
                    siamese["minutes_per_10000_extrapolated"] < 5))
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default_data_dir(), help="where redocred_dev.json is (default: "
                    "../shared/data where it is there, else data/real)")
    ap.add_argument("--max-length", type=int, default=128, help="subword tokens per instance (encode.py)")
    ap.add_argument("--records", type=int, default=2000, help="records of redocred_dev.json to encode")
    ap.add_argument("--train-records", type=int, default=320, help="instances for the training stages")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the encoding passes")
    ap.add_argument("--steps", type=int, default=8, help="training steps of each way")
    ap.add_argument("--mine-rows", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=10_000_000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    args = ap.parse_args()
    t0 = time.time()
    work = os.path.join(args.out, "speed_work")
    os.makedirs(work, exist_ok=True)
    source = os.path.join(args.data_dir, "redocred_dev.json")
    if not os.path.exists(source):
        print(f"{source} is absent (python data/prepare.py redocred): benchmarking on data/train.json instead")
        source = os.path.join(ROOT, "data", "train.json")
    with open(source, encoding="utf-8") as f:
        records = json.load(f)
    for name, n in (("encode", args.records), ("train", args.train_records)):
        with open(os.path.join(work, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(records[:n], f)
        run("encode.py", os.path.join(work, f"{name}.json"), "--out", os.path.join(work, f"{name}_encoded"),
            "--max-length", args.max_length, "--quiet")
    cpu = f"{cpu_name()}, {os.cpu_count()} CPUs"
    print(f"{cpu}; torch {torch.__version__} with {torch.get_num_threads()} threads", flush=True)

    bench_encode(os.path.join(work, "encode_encoded"), args.rounds)
    bench_train_step(os.path.join(work, "train_encoded"), args.steps)
    bench_training(os.path.join(work, "train_encoded"), work)
    bench_mining(args.mine_rows, work)
    bench_metrics(args.labels)

    enc = next(iter(RESULTS["encode data"].values()))  # the first --records records of `source`
    data = (f"Data: the first {enc['sentences']:,} records of {source} for encoding (mean {enc['mean_length']} subword "
            f"tokens, longest {enc['max_length']}, --max-length {args.max_length}) and the first "
            f"{args.train_records:,} for training; mining on random unit vectors (its time does not depend on the values).")
    md = markdown(cpu, data) + f"\nTotal wall time {time.time() - t0:.0f} s.\n"
    with open(os.path.join(args.out, "speed.json"), "w") as f:
        json.dump({"machine": cpu, "data": data, "threads": torch.get_num_threads(), "settings": vars(args),
                   "results": RESULTS,
                   "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets()]}, f, indent=1)
    with open(os.path.join(args.out, "speed.md"), "w") as f:
        f.write(md)
    print("\n" + md)


if __name__ == "__main__":
    main()
