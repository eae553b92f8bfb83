"""report.py: the cluster report and clusters.jsonl, and a trained run applied to a new file without labels.

The module fixture `runs` trains a tiny model once (conftest.py's `tiny_model` on `tiny_data`, one epoch
per stage), reports on it, and predicts and reports a copy of the test file with every 'relation' removed,
with the commands the README gives.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from data import Instance
from report import distinguishing_words, marked, words_between

REPO = Path(__file__).resolve().parents[1]
K = 4
# one torch thread per stage, as in test_pipeline.py: 2 shared cores
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
       "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}


def run(*args, ok=True):
    cmd = [sys.executable, *map(str, args)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    if ok:
        assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, tiny_data):
    out = tmp_path_factory.mktemp("report")
    train_file, test_file = tiny_data
    r = SimpleNamespace(train=out / "train", siamese=out / "siamese", cluster=out / "cluster",
                        new=out / "new", new_cluster=out / "new_cluster", new_file=out / "new.json",
                        train_records=read_json(train_file))
    run("encode.py", train_file, "--out", r.train, "--model", tiny_model, "--quiet")
    run("train_siamese.py", "--data", r.train, "--out", r.siamese, "--epochs", "1", "--batch-size", "16", "--quiet")
    run("mine_neighbors.py", r.siamese, "--k", "5")
    run("train_cluster.py", "--data", r.train, "--init", r.siamese, "--out", r.cluster, "--k", K,
        "--epochs", "1", "--batch-size", "16", "--quiet")
    run("report.py", r.cluster)
    # a new file without labels: encoded with the training run's tokenizer, predicted, reported; its
    # record 5 is invalid (head and tail overlap), skipped with --skip-invalid, and report.py, which
    # reads the file again, must skip it too
    r.new_records = [{k: v for k, v in rec.items() if k != "relation"} for rec in read_json(test_file)]
    bad = dict(r.new_records[5], id="bad", obj_start=r.new_records[5]["subj_start"],
               obj_end=r.new_records[5]["subj_start"])
    r.new_file.write_text(json.dumps(r.new_records[:5] + [bad] + r.new_records[5:]), encoding="utf-8")
    run("encode.py", r.new_file, "--out", r.new, "--tokenizer-from", r.train, "--skip-invalid", "--quiet")
    run("predict.py", "--model", r.cluster, "--data", r.new, "--out", r.new_cluster, "--quiet")
    r.new_log = run("report.py", r.new_cluster)
    return r


def sections(report):
    """{cluster: its section's text} of report.md's '## Cluster c: ...' sections, in their order."""
    parts = re.split(r"^## ", report, flags=re.M)[1:]
    return {int(re.match(r"Cluster (\d+):", p).group(1)): p for p in parts if p.startswith("Cluster ")}


def check_report(run_dir, data_dir, records, exemplars=4):
    pred, probs = np.load(run_dir / "pred.npy"), np.load(run_dir / "probs.npy")
    sizes = np.bincount(pred, minlength=probs.shape[1])
    text = (run_dir / "report.md").read_text(encoding="utf-8")
    secs = sections(text)
    assert list(secs) == sorted((c for c in range(len(sizes)) if sizes[c]), key=lambda c: -sizes[c])  # largest first
    empty = [c for c in range(len(sizes)) if not sizes[c]]
    assert (f"Empty clusters (no instance assigned): {', '.join(map(str, empty))}." in text) == bool(empty)
    ids = read_json(data_dir / "ids.json")
    index = np.load(data_dir / "index.npy")
    for c, sec in secs.items():
        assert re.match(rf"Cluster {c}: {sizes[c]} instances \(\d+%\), mean confidence "
                        rf"{probs.max(1)[pred == c].mean():.2f}\n", sec), sec
        assert re.search(r"^- types: PERSON–\w+ \d+%", sec, re.M), sec
        assert re.search(r"^- words: ", sec, re.M), sec
        shown = re.findall(r"^  - (.*)  \*\((\S+), ([\d.]+)\)\*$", sec, re.M)
        sentences = {tuple(records[index[i]]["token"]) for i in np.flatnonzero(pred == c)}
        assert len(shown) == min(exemplars, len(sentences)), sec  # one per sentence
        for sentence, rid, conf in shown:
            i = ids.index(rid)
            assert pred[i] == c and abs(probs[i].max() - float(conf)) <= 0.005
            rec = records[index[i]]
            head = " ".join(rec["token"][rec["subj_start"]:rec["subj_end"] + 1])
            tail = " ".join(rec["token"][rec["obj_start"]:rec["obj_end"] + 1])
            assert f"[[{head}]]" in sentence and "{{" + tail + "}}" in sentence, (sentence, head, tail)
    return text


def check_jsonl(run_dir, data_dir, records):
    lines = (run_dir / "clusters.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    pred, probs = np.load(run_dir / "pred.npy"), np.load(run_dir / "probs.npy")
    assert len(rows) == len(pred)
    assert [r["id"] for r in rows] == read_json(data_dir / "ids.json")
    assert [r["cluster"] for r in rows] == pred.tolist()
    np.testing.assert_allclose([r["confidence"] for r in rows], probs.max(1), atol=1e-4)
    for r, i in zip(rows, np.load(data_dir / "index.npy")):
        rec = records[i]
        assert r["head"] == " ".join(rec["token"][rec["subj_start"]:rec["subj_end"] + 1])
        assert r["tail"] == " ".join(rec["token"][rec["obj_start"]:rec["obj_end"] + 1])


def test_report_on_training_run(runs):
    text = check_report(runs.cluster, runs.train, runs.train_records)
    # with gold labels: the diagnostic section, after the clusters, counting every instance once
    assert "## Diagnostic: gold relations" in text and "reads the gold relation labels" in text
    gold = text.split("## Diagnostic: gold relations")[1]
    assert not sections(gold)
    table = gold.split("Gold relation (rows) x cluster (columns)")[1]
    counts = [int(v) for line in table.splitlines() if line.startswith("| ") and not line.startswith("| relation")
              for v in line.strip("| ").split(" | ")[1:] if v != "."]
    assert sum(counts) == len(runs.train_records)
    check_jsonl(runs.cluster, runs.train, runs.train_records)


def test_predict_new_file_without_labels(runs):
    assert not (runs.new / "labels.npy").exists()
    assert (runs.new_cluster / "pred.npy").is_file()
    meta = read_json(runs.new / "meta.json")
    assert (meta["n_invalid"], meta["n_records"], meta["skip_invalid"]) == (1, len(runs.new_records), True)
    assert "bad" not in read_json(runs.new / "ids.json")
    text = check_report(runs.new_cluster, runs.new, runs.new_records)
    assert "gold" not in text.lower()
    check_jsonl(runs.new_cluster, runs.new, runs.new_records)
    assert "wrote report.md, clusters.jsonl to" in runs.new_log.stdout


def test_report_exemplars_option_and_no_plot_without_asking(runs, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(runs.new_cluster, d)
    run("report.py", d, "--exemplars", 3, "--top", 2)
    check_report(d, runs.new, runs.new_records, exemplars=3)
    assert all(len(re.search(r"^- words: (.*)$", s, re.M).group(1).split(", ")) <= 2
               for s in sections((d / "report.md").read_text(encoding="utf-8")).values())
    assert not (d / "clusters.png").exists()


def test_plot(runs, tmp_path):
    """matplotlib is a test dependency (requirements-test.txt): this runs in CI, never skipped."""
    d = tmp_path / "run"
    shutil.copytree(runs.new_cluster, d)
    p = run("report.py", d, "--plot")
    assert (d / "clusters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](clusters.png)" in (d / "report.md").read_text(encoding="utf-8") and "clusters.png" in p.stdout


def test_plot_without_matplotlib_says_how_to_get_it(runs, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(runs.new_cluster, d)
    code = ("import runpy, sys; sys.modules['matplotlib'] = None; "  # makes `import matplotlib` fail
            f"sys.argv = ['report.py', {str(d)!r}, '--plot']; runpy.run_path('report.py', run_name='__main__')")
    p = run("-c", code)
    assert "pip install matplotlib" in p.stdout
    assert (d / "report.md").is_file() and not (d / "clusters.png").exists()


def test_report_refuses_a_run_without_clusters(runs, tmp_path):
    p = run("report.py", runs.siamese, ok=False)
    assert p.returncode != 0 and "train_cluster.py" in p.stderr and "Traceback" not in p.stderr
    # predict.py's output with a Siamese model: features only
    shutil.copytree(runs.new_cluster, tmp_path / "features_only", ignore=shutil.ignore_patterns("p*.npy"))
    p = run("report.py", tmp_path / "features_only", ok=False)
    assert p.returncode != 0 and "pred.npy" in p.stderr and "Traceback" not in p.stderr


# ---- the pieces ---------------------------------------------------------------------------------------


def inst(text, head, tail):
    return Instance("x", text.split(), head, tail, "PERSON", "CITY", None)


def test_words_between():
    assert words_between(inst("Ada Lovelace was born in the city of London .", (0, 1), (8, 8))) == {"born", "city"}
    assert words_between(inst("London , the birthplace of Ada", (5, 5), (0, 0))) == {"birthplace"}
    # adjacent entities: the WINDOW words either side
    assert words_between(inst("the mayor Ada London elected yesterday at noon", (2, 2), (3, 3))) == {
        "mayor", "elected", "yesterday"}


def test_distinguishing_words():
    sets = [{"born", "city"}, {"born", "city"}, {"born"}, {"born"}, {"lives", "city"}, {"lives", "city"}, {"lives", "rare"}]
    words = distinguishing_words(sets, range(7), np.array([0, 0, 0, 0, 1, 1, 1]), 3, 5)
    assert words[0] == [("born", 1.0)]         # 'city' is rarer among cluster 0's words than among the others'
    assert words[1] == [("lives", 1.0)]        # 'city' as common in both; 'rare' in one instance only
    assert words[2] == []                      # an empty cluster
    # a word counts once per sentence: three pairs of one sentence are not three sentences
    words = distinguishing_words(sets, [0, 0, 0, 1, 2, 3, 4], np.array([0, 0, 0, 0, 1, 1, 1]), 2, 5)
    assert words[0] == [("born", 1.0)]         # both of cluster 0's sentences; 'city' is in one
    words = distinguishing_words([{"born"}] * 3 + [{"lives"}] * 3, [0, 0, 0, 1, 2, 3], np.array([0] * 3 + [1] * 3), 2, 5)
    assert words[0] == []                      # in one sentence only


def test_marked():
    x = inst("Ada was born in Paris .", (0, 0), (4, 4))
    assert marked(x) == "[[Ada]] was born in {{Paris}} ."
    long = inst(" ".join(f"w{i}" for i in range(40)) + " Ada met Bo_b " + " ".join(f"v{i}" for i in range(40)),
                (40, 40), (42, 42))
    s = marked(long)
    assert s.startswith("… w28 ") and s.endswith(" v11 …") and "[[Ada]] met {{Bo\\_b}}" in s
