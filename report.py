"""Reading the clusters: a report for people, and the clusters as JSON lines, for any clustering run.

    python report.py runs/default/cluster                 # the training file's clusters
    python report.py runs/default/test_cluster --plot     # a file predicted with predict.py, and a picture

RUN is a directory holding pred.npy, probs.npy and features.npy: train_cluster.py's output, or
predict.py's with a clustering model, on any encoded file, labelled or not.  Its meta.json names the
encoded data directory, whose meta.json names the source file; the sentences are read again from that
file (data.read_instances; index.npy says which record each instance is).  Nothing here changes a cluster.

For each cluster, largest first, the report gives what a reader needs to name it without labels:
    size        instances, their share, and the mean confidence max_k phi_k(x)
    types       the most common (head type, tail type) pairs
    words       the words that most distinguish the text between the two entities in this cluster (below)
    exemplars   the --exemplars members nearest the cluster's centre (the mean of the members' L2-normalised
                features, nearness by cosine), one per sentence; the head is marked [[like this]], the
                tail {{like this}}

Words.  An instance's words are its tokens strictly between the two entities, lowercased, leaving out
punctuation, numbers, capitalised words (mostly the names of other entities) and a short list of function
words (STOPWORDS).  When the entities are adjacent, or nothing is left between them, the words within
WINDOW tokens before the first entity and after the second are used instead.  A word counts once per
sentence of a cluster, so that a sentence with many entity pairs (document-level data) is not taken for
many sentences.  With n_wc the number of sentences of cluster c that have word w, N_c = sum_w n_wc, the
same counts n_w' and N' over all other clusters, V distinct words and a = ALPHA, the score of w in c is
the smoothed log-odds ratio
    delta_wc = log((n_wc + a) / (N_c + aV)) - log((n_w' + a) / (N' + aV))
divided by its approximate standard deviation sqrt(1 / (n_wc + a) + 1 / (n_w' + a)), a z-score (Monroe,
Colaresi and Quinn 2008, "Fightin' words", with a uniform prior): a word must be both frequent in c and
rarer elsewhere to rank high, so that one name that happens to sit between two entities twice does not
outrank the verb that a third of the cluster shares.  Only words with a positive score that are in at
least 2 of the cluster's sentences are shown, each with the share of the cluster's sentences that have it.

When the data has gold relations (labels.npy of the encoded directory), a last section, marked as a
diagnostic, gives each cluster's majority relation and purity and the gold relation x cluster table.
No stage reads them to cluster; they are there to check what the report lets a reader see.

Writes into RUN:
    report.md       the report (Markdown, readable as plain text)
    clusters.jsonl  one line per encoded instance, in their order: {"id", "cluster", "confidence", "head", "tail"}
    clusters.png    with --plot, when matplotlib is installed: the features' first two principal
                    components, coloured by cluster
"""
import argparse
import io
import json
import os
from collections import Counter

import numpy as np

from data import STOPWORDS, DataError, read_instances, read_relation_names
from rundir import Log, atomic_write, check_source, fail, file_digest, load_json, load_meta, load_npy

ALPHA = 0.5      # the smoothing count a of the log-odds ratio
WINDOW = 3       # tokens either side of adjacent entities
CONTEXT = 12     # words of an exemplar shown before the first entity and after the second
MAX_GOLD_ROWS = 30  # relations shown in the gold x cluster table; the rest are summed in one row


def words_between(x):
    """The words that the statistic counts for instance `x` (see the module docstring)."""
    (s1, e1), (s2, e2) = sorted((x.head, x.tail))
    return (content_words(x.tokens[e1 + 1:s2])
            or content_words(x.tokens[max(0, s1 - WINDOW):s1] + x.tokens[e2 + 1:e2 + 1 + WINDOW]))


def content_words(tokens):
    """Lowercased, without punctuation, numbers, capitalised words (names) and STOPWORDS."""
    return {t.lower() for t in tokens if t[:1].isalpha() and not t.istitle() and t.lower() not in STOPWORDS}


def distinguishing_words(word_sets, sentences, pred, k, top):
    """For each cluster, [(word, share of its sentences)] of its `top` words by the z-scored log-odds ratio;
    `sentences` tells which instances share a sentence (equal values)."""
    vocab = sorted(set().union(*word_sets))
    col = {w: j for j, w in enumerate(vocab)}
    counts = np.zeros((k, len(vocab)))                # n_wc: sentences of cluster c with word w
    seen = set()
    for ws, s, c in zip(word_sets, sentences, pred):
        new = [col[w] for w in ws if (c, s, w) not in seen]
        seen.update((c, s, w) for w in ws)
        counts[c, new] += 1
    rest = counts.sum(0) - counts                      # n_w' over the other clusters
    a, av = ALPHA, ALPHA * len(vocab)
    delta = (np.log((counts + a) / (counts.sum(1, keepdims=True) + av))
             - np.log((rest + a) / (rest.sum(1, keepdims=True) + av)))
    z = delta / np.sqrt(1 / (counts + a) + 1 / (rest + a))
    n_sentences = Counter(c for c, _ in set(zip(pred, sentences)))
    out = []
    for c in range(k):
        order = [j for j in np.argsort(-z[c], kind="stable") if counts[c, j] >= 2 and z[c, j] > 0][:top]
        out.append([(vocab[j], counts[c, j] / n_sentences[c]) for j in order])
    return out


def marked(x):
    """The sentence of `x` with the head as [[head]] and the tail as {{tail}}, cut to CONTEXT words around
    the pair, with Markdown's special characters escaped."""
    words = [_escape(t) for t in x.tokens]
    for (s, e), (opening, closing) in ((x.head, ("[[", "]]")), (x.tail, ("{{", "}}"))):
        words[s] = opening + words[s]
        words[e] = words[e] + closing  # after the line above: a one-word entity has s == e
    lo = max(0, min(x.head[0], x.tail[0]) - CONTEXT)
    hi = min(len(words), max(x.head[1], x.tail[1]) + 1 + CONTEXT)
    text = " ".join(words[lo:hi])
    return ("… " if lo > 0 else "") + text + (" …" if hi < len(words) else "")


def _escape(token):
    return "".join("\\" + ch if ch in "\\`*_[]{}<>|" else ch for ch in token)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def pca_plot(path, feats, pred, order):
    """The L2-normalised features' first two principal components (numpy SVD), coloured by cluster."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    xy = u[:, :2] * s[:2]
    explained = s[:2] ** 2 / (s ** 2).sum()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    cmap = plt.get_cmap("tab20" if len(order) > 10 else "tab10")
    for i, c in enumerate(order):
        m = pred == c
        ax.scatter(xy[m, 0], xy[m, 1], s=10, alpha=0.7, color=cmap(i % cmap.N), label=f"{c} ({m.sum()})")
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of the variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}%)")
    ax.set_title("Features projected on two principal components, coloured by cluster")
    ax.legend(title="cluster (size)", fontsize=8, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="directory of train_cluster.py, or of predict.py with a clustering model")
    ap.add_argument("--top", type=int, default=8, help="distinguishing words shown per cluster")
    ap.add_argument("--exemplars", type=int, default=4, help="sentences shown per cluster")
    ap.add_argument("--plot", action="store_true", help="also draw clusters.png (needs matplotlib)")
    args = ap.parse_args()
    log = Log("report")
    if args.top < 1 or args.exemplars < 1:
        raise DataError(f"--top {args.top} --exemplars {args.exemplars}: each must be at least 1")

    run_meta = load_meta(args.run, ("cluster", "predict"))
    if not os.path.exists(os.path.join(args.run, "pred.npy")):
        raise DataError(f"{args.run}: holds no pred.npy; a report needs clusters (train_cluster.py's output, "
                        f"or predict.py's with a train_cluster.py model)")
    data_dir = run_meta["data"]
    meta = load_meta(data_dir, ("encode",))
    check_source(run_meta, meta, args.run)
    n = meta["n_instances"]
    pred = np.asarray(load_npy(os.path.join(args.run, "pred.npy"), n)).astype(np.int64)
    probs = np.asarray(load_npy(os.path.join(args.run, "probs.npy"), n))
    feats = np.asarray(load_npy(os.path.join(args.run, "features.npy"), n), np.float32)
    index = np.asarray(load_npy(os.path.join(data_dir, "index.npy"), n))
    names = read_relation_names(meta["relation_names"]) if meta.get("relation_names") else None
    records = read_instances(meta["source"], meta["format"], meta.get("skip_invalid", False), names)
    if file_digest(meta["source"]) != meta["source_digest"]:
        raise DataError(f"{meta['source']}: changed since {data_dir} was encoded from it; encode it again")
    instances = [records[i] for i in index]
    k = probs.shape[1]
    conf = probs.max(1)
    sizes = np.bincount(pred, minlength=k)
    order = [c for c in np.argsort(-sizes, kind="stable") if sizes[c]]
    empty = [c for c in range(k) if not sizes[c]]
    log(f"read {n} instances in {len(order)} clusters from {args.run} and their sentences from {meta['source']}")

    # clusters.jsonl: the machine-readable twin
    lines = [json.dumps({"id": x.id, "cluster": int(c), "confidence": round(float(p), 4),
                         "head": " ".join(x.tokens[x.head[0]:x.head[1] + 1]),
                         "tail": " ".join(x.tokens[x.tail[0]:x.tail[1] + 1])}, ensure_ascii=False)
             for x, c, p in zip(instances, pred, conf)]
    atomic_write(os.path.join(args.run, "clusters.jsonl"), lambda f: f.write(("\n".join(lines) + "\n").encode()))

    # what describes each cluster
    sentences = [" ".join(x.tokens) for x in instances]
    words = distinguishing_words([words_between(x) for x in instances], sentences, pred, k, args.top)
    typed = any(x.head_type or x.tail_type for x in instances)
    pairs = [f"{x.head_type or '-'}–{x.tail_type or '-'}" for x in instances]
    unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)

    plotted = False
    if args.plot:
        try:
            pca_plot(os.path.join(args.run, "clusters.png"), feats, pred, order)
            plotted = True
        except ImportError:
            log("--plot needs matplotlib, which is not installed: pip install matplotlib")

    md = [f"# Clusters of {os.path.basename(meta['source'])}", "",
          f"{n} instances of `{meta['source']}` in {len(order)} clusters (K = {k}), from `{os.path.abspath(args.run)}`; "
          f"mean confidence {conf.mean():.2f}.  Clusters are numbered as in `pred.npy` and `clusters.jsonl`, "
          f"largest first here.", "",
          "How to read it: in each sentence the head entity is marked `[[like this]]` and the tail entity "
          "`{{like this}}`.  *Words* are those that most distinguish the text between the two entities in "
          "the cluster from the other clusters (a z-scored log-odds ratio, see `report.py`), each with the "
          "share of the cluster's sentences that have it.  *Exemplars* are the instances nearest the "
          "cluster's centre in feature space, one per sentence, with their id and confidence.", ""]
    if empty:
        md += [f"Empty clusters (no instance assigned): {', '.join(map(str, empty))}.", ""]
    if plotted:
        md += ["![features projected on two principal components, coloured by cluster](clusters.png)", ""]
    overview = []
    for c in order:
        top_pair, m = Counter(p for p, q in zip(pairs, pred) if q == c).most_common(1)[0]
        overview.append([c, sizes[c], f"{conf[pred == c].mean():.2f}"]
                        + ([f"{top_pair} {100 * m / sizes[c]:.0f}%"] if typed else [])
                        + [", ".join(w for w, _ in words[c][:4]) or "(none)"])
    md += table(["cluster", "size", "confidence"] + (["main type pair"] if typed else []) + ["top words"], overview)
    md.append("")

    for c in order:
        members = np.flatnonzero(pred == c)
        md += [f"## Cluster {c}: {sizes[c]} instances ({100 * sizes[c] / n:.0f}%), "
               f"mean confidence {conf[members].mean():.2f}", ""]
        if typed:
            counts = Counter(pairs[i] for i in members).most_common(3)
            md.append("- types: " + ", ".join(f"{p} {100 * m / sizes[c]:.0f}%" for p, m in counts))
        md.append("- words: " + (", ".join(f"{w} {100 * s:.0f}%" for w, s in words[c])
                                 or "(no word in two of its sentences)"))
        md += ["- exemplars:", ""]
        centre = unit[members].mean(0)
        shown = {}  # one exemplar per sentence, nearest the centre first
        for i in members[np.argsort(-(unit[members] @ centre), kind="stable")]:
            if len(shown) == args.exemplars:
                break
            shown.setdefault(sentences[i], i)
        md += [f"  - {marked(instances[i])}  *({instances[i].id}, {conf[i]:.2f})*" for i in shown.values()]
        md.append("")

    if os.path.exists(os.path.join(data_dir, "labels.npy")):
        labels = np.asarray(load_npy(os.path.join(data_dir, "labels.npy"), n))
        names = load_json(os.path.join(data_dir, "label_names.json"))
        md += gold_section(labels, names, pred, order, sizes)

    atomic_write(os.path.join(args.run, "report.md"), lambda f: f.write(("\n".join(md) + "\n").encode()))
    log.done(f"report.md, clusters.jsonl{' and clusters.png' if plotted else ''} to {args.run}")


def gold_section(labels, names, pred, order, sizes):
    """Majority relation and purity of each cluster, and the gold relation x cluster table."""
    n = len(labels)
    table_counts = np.zeros((len(names), pred.max() + 1), np.int64)
    np.add.at(table_counts, (labels, pred), 1)
    md = ["## Diagnostic: gold relations", "",
          "**This section reads the gold relation labels**, which no stage uses to cluster.  It checks what the "
          "sections above let a reader see; it is not part of the method's output.", ""]
    rows = []
    for c in order:
        top = table_counts[:, c].argmax()
        rows.append([c, sizes[c], names[top], f"{table_counts[top, c] / sizes[c]:.2f}"])
    purity = table_counts[:, order].max(0).sum() / n
    md += table(["cluster", "size", "majority relation", "purity"], rows)
    md += ["", f"Overall purity (share of instances in their cluster's majority relation): {purity:.2f}.", "",
           "Gold relation (rows) x cluster (columns), counts; `.` is zero.", ""]
    by_size = np.argsort(-table_counts.sum(1), kind="stable")
    shown, other = by_size[:MAX_GOLD_ROWS], by_size[MAX_GOLD_ROWS:]
    body = [[names[r]] + [table_counts[r, c] or "." for c in order] for r in shown if table_counts[r].sum()]
    if len(other) and table_counts[other].sum():
        body.append([f"({len(other)} other relations)"] + [table_counts[other, c].sum() or "." for c in order])
    return md + table(["relation"] + [str(c) for c in order], body) + [""]


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
