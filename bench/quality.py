"""Quality benchmark on real data: the method against the reference points, on a held-out 20 %.

    python bench/quality.py                       # both sets, about 45 min on 2 cores
    python bench/quality.py --sets redocred --siamese-epochs 1 --cluster-epochs 1
    python bench/quality.py --data-dir DIR        # the files in DIR
    python bench/quality.py --sets redocred --precision bf16 --seed 1   # bf16 against fp32, seed by seed
    python bench/quality.py --sets redocred --k-auto                    # also the head at K from --k auto

It reads redocred_dev.json (sentence-level instances, TACRED JSON) and fewrel_val_wiki.json from
--data-dir: by default ../shared/data where it is there, else data/real, where `python data/prepare.py
redocred` and `python data/prepare.py fewrel` write them (downloaded, or --from a local copy).

For each set it splits the file 80 / 20 with a fixed seed, runs the whole pipeline on the 80 %
(encode, train_siamese, mine_neighbors, train_cluster at K = 10 and at K = the number of gold
relations), predicts the 20 % with the trained models, and scores, at both K:
    (a) one cluster per (head type, tail type) pair, where there are types;
    (b) k-means on the frozen encoder's features;
    (c) k-means on the Siamese features;
    (d) the clustering head (the method);
    (e) k-means on the final features;
    (f) type pairs held to K (the K - 1 largest type pairs, the rest together), where there are types;
    (g) training-part k-means on the Siamese and on the final features: fitted to the 80 %'s features, the
        20 % assigned to the nearest centroid, as the head is fitted to the 80 % and predicts the 20 %;
    (h) k-means on the frozen features mapped by the context LDA of the 80 % (no labels).
Then, for the frozen, Siamese and final (K = 10 run) features of the 20 %, K without labels
(evaluate.py --k-scan): K estimated by estimate_k.py (no labels) on those features and on the same
kind of features of the 80 % (as train_cluster.py --k auto estimates it), the gold number of relations,
and k-means B3 F1 of the 20 % at each estimate, at K = 10, at the gold K and the best over the scanned
range (an ORACLE that reads the labels, evaluation only), each the mean over 3 k-means seeds.
--k-auto adds a third clustering run per set, train_cluster.py --k auto (K estimated without labels
from the Siamese features of the 80 %), scored at that K like the other two.
Same run, same split, same seed.  Every setting is fixed before the run: nothing here, and nothing
in the pipeline, looks at the gold labels except evaluate.py.  Writes bench/out/quality.json and
bench/out/quality.md, and prints the wall time of each stage.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = {"redocred": ("redocred_dev.json", 91), "fewrel": ("fewrel_val_wiki.json", 16)}
METRICS = ("b3_precision", "b3_recall", "b3_f1", "v_homogeneity", "v_completeness", "v_measure", "ari")


def split(path, out_dir, seed):
    """80 / 20 split of a TACRED list or a FewRel object, written in the file's own format."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    items = records_of(raw)
    order = np.random.default_rng(seed).permutation(len(items))
    cut = int(0.8 * len(items))
    files = []
    for name, part in (("train", order[:cut]), ("test", order[cut:])):
        files.append(os.path.join(out_dir, f"{name}.json"))
        with open(files[-1], "w", encoding="utf-8") as f:
            json.dump(in_format_of(raw, [items[i] for i in sorted(part)]), f)
    return files


def records_of(raw):
    """The records of a TACRED list, or the (relation, record) pairs of a FewRel object."""
    return raw if isinstance(raw, list) else [(r, x) for r, xs in raw.items() for x in xs]


def in_format_of(raw, chosen):
    """Records chosen from records_of(raw), in raw's format: a list, or a FewRel object again."""
    if isinstance(raw, list):
        return chosen
    grouped = {}
    for r, x in chosen:
        grouped.setdefault(r, []).append(x)
    return grouped


def run(cmd, times, label):
    t = time.time()
    print("$", " ".join(cmd), flush=True)
    quiet = ["--quiet"] if label != "mine_neighbors" else []  # the stages with progress bars
    subprocess.run([sys.executable] + cmd + quiet, cwd=ROOT, check=True)
    times[label] = round(times.get(label, 0) + time.time() - t, 1)


def evaluate(dirs, k, out, times, k_scan=False, lda_from=None):
    t = time.time()
    subprocess.run([sys.executable, "evaluate.py", *dirs, "--k", str(k), "--out", out,
                    *(["--k-scan"] if k_scan else []), *(["--lda-from", lda_from] if lda_from else [])],
                   cwd=ROOT, check=True)
    label = "evaluate --k-scan" if k_scan else "evaluate"
    times[label] = round(times.get(label, 0) + time.time() - t, 1)
    with open(out) as f:
        m = json.load(f)
    return m["k_scan"] if k_scan else m["rows"]


def bench_set(name, args):
    file, n_gold = SETS[name]
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    train, test = split(os.path.join(args.data_dir, file), out, args.seed)
    times, table = {}, {}
    ml = ["--max-length", str(args.max_length)]
    pr = ["--precision", args.precision]
    run(["encode.py", train, "--out", f"{out}/train", "--features", *ml, *pr], times, "encode")
    run(["encode.py", test, "--out", f"{out}/test", "--features", "--tokenizer-from", f"{out}/train", *ml, *pr],
        times, "encode")
    run(["train_siamese.py", "--data", f"{out}/train", "--out", f"{out}/siamese",
         "--epochs", str(args.siamese_epochs), "--seed", str(args.seed), *pr], times, "train_siamese")
    run(["mine_neighbors.py", f"{out}/siamese"], times, "mine_neighbors")
    run(["predict.py", "--model", f"{out}/siamese", "--data", f"{out}/test", "--out", f"{out}/test_siamese", *pr],
        times, "predict")
    for k in (10, n_gold) + (("auto",) if args.k_auto else ()):
        run(["train_cluster.py", "--data", f"{out}/train", "--init", f"{out}/siamese", "--out",
             f"{out}/cluster_k{k}", "--k", str(k), "--epochs", str(args.cluster_epochs), "--seed", str(args.seed),
             *pr], times, "train_cluster")
        run(["predict.py", "--model", f"{out}/cluster_k{k}", "--data", f"{out}/test", "--out",
             f"{out}/test_cluster_k{k}", *pr], times, "predict")
        rows = evaluate([f"{out}/test_cluster_k{k}", f"{out}/test_siamese", f"{out}/test"], k,
                        f"{out}/metrics_k{k}.json", times, lda_from=f"{out}/train")
        if k == "auto":
            with open(f"{out}/cluster_kauto/meta.json") as f:
                k = f"auto ({json.load(f)['k']})"  # the K estimated
        table[k] = rows
    k_scan = evaluate([f"{out}/test_cluster_k10", f"{out}/test_siamese", f"{out}/test"], 10, f"{out}/metrics_kscan.json",
                      times, k_scan=True, lda_from=f"{out}/train")
    k_scan = [{key: v for key, v in s.items() if key != "k_curve"} for s in k_scan]
    with open(f"{out}/train/meta.json") as f:
        pooling = json.load(f)["pooling"]
    return {"data": file, "n_gold": n_gold, "pooling": pooling, "times": times, "table": table, "k_scan": k_scan}


def markdown(results, args):
    lines = [f"Held-out 20 % (seed {args.seed}), all-MiniLM-L6-v2 with its top 2 layers trained, {args.siamese_epochs} "
             f"Siamese + {args.cluster_epochs} clustering epochs, max length {args.max_length}, "
             f"{args.precision}; percent.", ""]
    for name, r in results.items():
        for k, rows in r["table"].items():
            lines += [f"**{r['data']}, K = {k}** (pooling: {r['pooling']})", "",
                      "| | B3 P | B3 R | B3 F1 | V hom | V com | V F1 | ARI |", "|---|---|---|---|---|---|---|---|"]
            for row in rows:
                lines.append(f"| {row['name']} | " + " | ".join(f"{100 * row[m]:.1f}" for m in METRICS) + " |")
            lines.append("")
        if r.get("k_scan"):
            lines += [f"**{r['data']}, K without labels** (estimated by estimate_k.py, which reads no labels; the last "
                      "column is an ORACLE that reads them, evaluation only; each B3 F1 the mean over 3 k-means seeds)", "",
                      "| k-means on | K estimated | B3 F1 at the estimate | K estimated on the training part | "
                      "B3 F1 at that K | at K = 10 | gold K | at the gold K | oracle: best over the range (K) |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for s in r["k_scan"]:
                cell = lambda v: f"{100 * v:.1f}" if v is not None else "-"
                what = s["name"].replace("k-means, ", "") + (" (K = 10 run)" if "final" in s["name"] else "")
                lines.append(f"| {what} | {s['k_estimated']} | {cell(s['b3_f1_at_estimate'])} | "
                             f"{s.get('k_estimated_on_train') or '-'} | {cell(s.get('b3_f1_at_train_estimate'))} | "
                             f"{cell(s['b3_f1_at_10'])} | {s['k_gold']} | {cell(s['b3_f1_at_gold'])} | "
                             f"{cell(s['oracle_best_b3_f1'])} ({s['oracle_best_k']}, range {s['k_range'][0]}.."
                             f"{s['k_range'][1]}) |")
            lines.append("")
        lines.append("Wall time per stage (s): " + ", ".join(f"{s} {t}" for s, t in r["times"].items()))
        lines.append("")
    return "\n".join(lines)


def default_data_dir():
    """../shared/data beside the project where it is there, else data/real (data/prepare.py's)."""
    shared = os.path.join(os.path.dirname(ROOT), "shared", "data")
    return shared if os.path.isdir(shared) else os.path.join(ROOT, "data", "real")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default_data_dir(),
                    help="where redocred_dev.json and fewrel_val_wiki.json are (default: ../shared/data where "
                         "present, else data/real)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--siamese-epochs", type=int, default=2)
    ap.add_argument("--cluster-epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="of the 80 / 20 split and of every stage")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="passed to every stage")
    ap.add_argument("--k-auto", action="store_true",
                    help="also train and score the head at K estimated without labels (train_cluster.py --k auto)")
    args = ap.parse_args()
    missing = [s for s in args.sets if not os.path.isfile(os.path.join(args.data_dir, SETS[s][0]))]
    if missing:
        sys.exit(f"bench/quality.py: {', '.join(SETS[s][0] for s in missing)} not in {args.data_dir}: write "
                 + " and ".join(f"`python data/prepare.py {s}`" for s in missing) + " (README, \"Results\")")
    t0 = time.time()
    results = {name: bench_set(name, args) for name in args.sets}
    md = markdown(results, args) + f"\nTotal wall time: {time.time() - t0:.0f} s\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump({"settings": vars(args), "results": results}, f, indent=1)
    with open(os.path.join(args.out, "quality.md"), "w") as f:
        f.write(md)
    print("\n" + md)


if __name__ == "__main__":
    main()
