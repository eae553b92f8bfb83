"""End-to-end tests: the stage scripts run as subprocesses on a tiny BERT, their files checked on disk.

encode.py -> train_siamese.py -> mine_neighbors.py -> train_cluster.py -> predict.py -> evaluate.py, and
run_all.sh chaining them.  The model is the session's `tiny_model` (conftest.py: a 2-layer, 32-wide BERT
saved with save_pretrained, passed as --model PATH), so nothing is downloaded.  The expensive runs are
shared: the module fixture `pipe` runs every stage once and most tests inspect its outputs.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch

import data
import training
from model import LDA_DIMS, lda_map
from metrics import score

REPO = Path(__file__).resolve().parents[1]
# width of r with the tiny BERT (hidden size 32) for each pooling: four 32-wide parts, or two
R_DIM = {"both": 128, "sumdiff": 128, "markers": 64, "spans": 64}
MAPPED = LDA_DIMS  # width of r in the trained models: the relation-context map's (--context-map, the default)
K = 4          # clusters
MINE_K = 5     # neighbours
SIAMESE = ["--epochs", "2", "--batch-size", "16", "--seed", "0"]
CLUSTER = ["--k", str(K), "--epochs", "2", "--batch-size", "16", "--seed", "0"]


# One torch thread per stage: on 2 shared cores, torch's spinning thread pool slows a stage down tenfold
# whenever another process is busy; and the repeatability checks compare runs with the same thread count.
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
       "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}


def run(*args, ok=True, timeout=300):
    """Run `python *args` in the repository root; with ok, require exit status 0 (showing the output if not)."""
    cmd = [sys.executable, *map(str, args)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)
    if ok:
        assert p.returncode == 0, (f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}"
                                   f"\n--- stderr\n{p.stderr[-4000:]}")
    return p


def load(d, name):
    return np.load(Path(d) / name, allow_pickle=False)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tokenizer_of(run_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(Path(run_dir) / "tokenizer"))


def expected_markers(record, known):
    """The four markers encode.py must have put around this record's entities (data.mark's rule: a type
    without a marker in the vocabulary `known` is marked untyped)."""
    h_open, h_close, t_open, t_close = data.markers(record.get("subj_type"), record.get("obj_type"))
    if h_open not in known:
        h_open, h_close = "<h>", "</h>"
    if t_open not in known:
        t_open, t_close = "<t>", "</t>"
    return h_open, h_close, t_open, t_close


def pieces_text(tokens):
    """Word pieces joined back into text without spaces ('##' continuations glued)."""
    return "".join(t[2:] if t.startswith("##") else t for t in tokens)


def check_encoded(d, records, tok=None, max_length=128, features=False, check_text=True):
    """Check everything encode.py's docstring promises about directory `d`, encoded from `records`."""
    d = Path(d)
    meta = read_json(d / "meta.json")
    tok = tok or tokenizer_of(d)
    assert meta["stage"] == "encode"
    assert meta["n_records"] == len(records)
    n = meta["n_instances"]
    assert 0 < n and n + meta["n_skipped"] == len(records)
    assert meta["max_length"] == max_length

    ids, lengths = load(d, "input_ids.npy"), load(d, "lengths.npy")
    head, tail, index = load(d, "head_pos.npy"), load(d, "tail_pos.npy"), load(d, "index.npy")
    head_end, tail_end = load(d, "head_end.npy"), load(d, "tail_end.npy")
    assert ids.dtype == np.int32 and ids.ndim == 2 and ids.shape[0] == n
    T = ids.shape[1]
    assert T == meta["width"] <= max_length
    for name, a in (("lengths", lengths), ("head_pos", head), ("tail_pos", tail), ("head_end", head_end),
                    ("tail_end", tail_end), ("index", index)):
        assert a.dtype == np.int32 and a.shape == (n,), name
    assert (lengths <= T).all() and lengths.max() == T and (lengths <= max_length).all()
    assert ((head >= 1) & (head < lengths - 1)).all() and ((tail >= 1) & (tail < lengths - 1)).all()
    assert (head != tail).all()
    assert (index >= 0).all() and (index < len(records)).all() and (np.diff(index) > 0).all()
    assert read_json(d / "ids.json") == [str(records[i].get("id", i)) for i in index]

    markers = meta["markers"]
    assert set(data.markers(None, None)) <= set(markers)
    marker_ids = dict(zip(markers, tok.convert_tokens_to_ids(markers)))
    assert len(set(marker_ids.values())) == len(markers) and tok.unk_token_id not in marker_ids.values()
    for r in range(n):
        row, L, rec = ids[r], int(lengths[r]), records[index[r]]
        assert row[0] == tok.cls_token_id and row[L - 1] == tok.sep_token_id, r
        assert (row[L:] == tok.pad_token_id).all(), r
        h_open, h_close, t_open, t_close = expected_markers(rec, markers)
        toks = tok.convert_ids_to_tokens(row[:L].tolist())
        assert toks[head[r]] == h_open and toks[head[r]].startswith("<h"), (r, toks)
        assert toks[tail[r]] == t_open and toks[tail[r]].startswith("<t"), (r, toks)
        # each marker exactly once, each closing marker after its opening one
        for m in (h_open, h_close, t_open, t_close):
            assert toks.count(m) == 1, (r, m, toks)
        hc, tc = toks.index(h_close), toks.index(t_close)
        assert head[r] < hc and tail[r] < tc
        assert (head_end[r], tail_end[r]) == (hc, tc), (r, toks)
        if check_text:  # the pieces between the markers are the entity's words
            for (s, e), (a, b) in (((rec["subj_start"], rec["subj_end"]), (head[r], hc)),
                                   ((rec["obj_start"], rec["obj_end"]), (tail[r], tc))):
                assert pieces_text(toks[a + 1:b]) == "".join(rec["token"][s:e + 1]).lower(), (r, toks)

    if any(x.get("subj_type") or x.get("obj_type") for x in records):
        tp = load(d, "type_pair.npy")
        assert tp.dtype == np.int32 and tp.shape == (n,)
        names = meta["type_pairs"]
        assert [names[t] for t in tp] == [f"{records[i]['subj_type']}-{records[i]['obj_type']}" for i in index]
    if all(x.get("relation") is not None for x in records):
        labels = load(d, "labels.npy")
        assert labels.dtype == np.int32 and labels.shape == (n,)
        label_names = read_json(d / "label_names.json")
        assert [label_names[l] for l in labels] == [records[i]["relation"] for i in index]
    if features:
        f = load(d, "features.npy")
        assert f.dtype == np.float32 and f.shape == (n, R_DIM[meta["pooling"]]) and np.isfinite(f).all()
    else:
        assert not (d / "features.npy").exists()
    return meta


# ---- the whole pipeline, run once ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, tiny_model, tiny_data):
    out = tmp_path_factory.mktemp("pipe")
    train_file, test_file = tiny_data
    p = SimpleNamespace(root=out, model=tiny_model, train_file=train_file, test_file=test_file,
                        train=out / "train", test=out / "test", siamese=out / "siamese",
                        cluster=out / "cluster", test_cluster=out / "test_cluster",
                        test_siamese=out / "test_siamese", logs={})
    p.train_records, p.test_records = read_json(train_file), read_json(test_file)
    p.logs["encode"] = run("encode.py", train_file, "--out", p.train, "--model", tiny_model, "--features")
    p.logs["encode_test"] = run("encode.py", test_file, "--out", p.test, "--tokenizer-from", p.train,
                                "--features")
    p.logs["siamese"] = run("train_siamese.py", "--data", p.train, "--out", p.siamese, *SIAMESE)
    p.logs["mine"] = run("mine_neighbors.py", p.siamese, "--k", MINE_K)
    p.logs["cluster"] = run("train_cluster.py", "--data", p.train, "--init", p.siamese, "--out", p.cluster,
                            *CLUSTER)
    p.logs["predict"] = run("predict.py", "--model", p.cluster, "--data", p.test, "--out", p.test_cluster)
    p.logs["predict_siamese"] = run("predict.py", "--model", p.siamese, "--data", p.test,
                                    "--out", p.test_siamese)
    p.logs["evaluate"] = run("evaluate.py", p.test_cluster, p.test_siamese, p.test, "--k", K, "--seed", 0,
                             "--lda-from", p.train)
    return p


# ---- encode.py ------------------------------------------------------------------------------------


def test_encode_train(pipe):
    meta = check_encoded(pipe.train, pipe.train_records, features=True)
    assert meta["n_instances"] == len(pipe.train_records) == 120  # every short embedded sentence fits
    assert meta["model"] == str(pipe.model)
    assert meta["pooling"] == "both"
    types = {(r["subj_type"], r["obj_type"]) for r in pipe.train_records}
    assert meta["markers"] == sorted(set(data.markers(None, None)).union(
        *(data.markers(h, t) for h, t in types)))
    assert (pipe.train / "tokenizer").is_dir()


def test_encode_test_with_tokenizer_from(pipe):
    train_meta, test_meta = read_json(pipe.train / "meta.json"), read_json(pipe.test / "meta.json")
    check_encoded(pipe.test, pipe.test_records, features=True)
    assert test_meta["markers"] == train_meta["markers"] and test_meta["model"] == train_meta["model"]
    assert test_meta["pooling"] == train_meta["pooling"]
    markers = train_meta["markers"]
    tr, te = tokenizer_of(pipe.train), tokenizer_of(pipe.test)
    assert tr.convert_tokens_to_ids(markers) == te.convert_tokens_to_ids(markers)
    assert len(tr) == len(te)
    # and the test arrays read the same with the training run's tokenizer
    check_encoded(pipe.test, pipe.test_records, tok=tr, features=True)


@pytest.mark.parametrize("typed", [True, False])
def test_encode_poolings_are_one_set_of_states(pipe, tmp_path, typed):
    """End to end through encode.py: both (the default) = markers beside spans, and sumdiff = the sums
    and differences of both's head and tail parts, each part unit length."""
    records = [{k: v for k, v in r.items() if typed or k not in ("subj_type", "obj_type")}
               for r in pipe.train_records[:30]]
    src = tmp_path / "records.json"
    src.write_text(json.dumps(records), encoding="utf-8")
    f = {}
    for pooling in ("both", "sumdiff", "markers", "spans"):
        flag = ["--pooling", pooling] if pooling != "both" else []  # "both" is the default
        run("encode.py", src, "--out", tmp_path / pooling, "--model", pipe.model, "--features", *flag)
        assert check_encoded(tmp_path / pooling, records, features=True)["pooling"] == pooling
        f[pooling] = load(tmp_path / pooling, "features.npy")
    np.testing.assert_allclose(f["both"], np.concatenate([f["markers"], f["spans"]], 1), atol=1e-5)
    for part in np.split(f["both"], 4, axis=1):  # each entity's state and span mean: unit length
        np.testing.assert_allclose(np.linalg.norm(part, axis=1), 1, atol=1e-5)
    assert not np.allclose(f["markers"], f["spans"])
    a, b, c, d = np.split(f["both"], 4, axis=1)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(f["sumdiff"], np.concatenate([unit(a + b), unit(a - b), unit(c + d), unit(c - d)], 1),
                               atol=1e-4)
    p = run("encode.py", src, "--out", tmp_path / "x", "--tokenizer-from", pipe.train, "--pooling", "spans", ok=False)
    assert p.stderr.strip() == (f"error: --pooling and --tokenizer-from: the pooling is the one {pipe.train} "
                                f"was encoded with")


def test_encode_max_length_truncates_around_entities(pipe, tmp_path):
    out = tmp_path / "short"
    run("encode.py", pipe.train_file, "--out", out, "--model", pipe.model, "--max-length", 16)
    meta = check_encoded(out, pipe.train_records, max_length=16)
    assert meta["n_skipped"] > 0  # some entity pairs are too far apart for 14 tokens

    full = {int(i): r for r, i in enumerate(load(pipe.train, "index.npy"))}
    f_ids, f_len = load(pipe.train, "input_ids.npy"), load(pipe.train, "lengths.npy")
    f_head, f_tail = load(pipe.train, "head_pos.npy"), load(pipe.train, "tail_pos.npy")
    ids, lengths, head, tail = (load(out, n) for n in ("input_ids.npy", "lengths.npy", "head_pos.npy",
                                                        "tail_pos.npy"))
    tok = tokenizer_of(pipe.train)
    kept = {int(i): r for r, i in enumerate(load(out, "index.npy"))}
    truncated = 0
    for i, fr in full.items():
        L = int(f_len[fr])
        toks = tok.convert_ids_to_tokens(f_ids[fr, :L].tolist())
        closes = [j for j, t in enumerate(toks) if t.startswith("</")]
        span = max(closes) - min(f_head[fr], f_tail[fr]) + 1   # both marked entities, markers included
        assert (i in kept) == (span <= 16 - 2), (i, span)
        if i not in kept:
            continue
        r = kept[i]
        if L <= 16:  # fits: unchanged
            assert lengths[r] == L and (ids[r, :L] == f_ids[fr, :L]).all()
            assert head[r] == f_head[fr] and tail[r] == f_tail[fr]
            continue
        truncated += 1
        assert lengths[r] == 16
        # a contiguous window of the full sentence, shifted consistently for both markers
        shift = int(f_head[fr] - head[r])
        assert shift >= 0 and f_tail[fr] - tail[r] == shift
        assert (ids[r, 1:15] == f_ids[fr, 1 + shift:15 + shift]).all()
    assert truncated > 0


# ---- train_siamese.py, mine_neighbors.py, train_cluster.py -------------------------------------------


def test_train_siamese_outputs(pipe):
    n = read_json(pipe.train / "meta.json")["n_instances"]
    f = load(pipe.siamese, "features.npy")
    assert f.dtype == np.float32 and f.shape == (n, MAPPED) and np.isfinite(f).all()
    assert (pipe.siamese / "model.pt").is_file() and (pipe.siamese / "checkpoint.pt").is_file()
    meta = read_json(pipe.siamese / "meta.json")
    assert meta["stage"] == "siamese" and meta["n_instances"] == n
    assert Path(meta["data"]) == pipe.train.resolve()
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    for h in meta["history"]:
        assert np.isfinite(h["loss"]) and -1 <= h["loss"] <= 1
        assert 0.5 < h["z_rank"] <= 1  # healthy: z spans most of the directions a batch allows
    assert "WARNING" not in pipe.logs["siamese"].stdout
    state = torch.load(pipe.siamese / "model.pt", weights_only=True)["state"]
    frozen = load(pipe.train, "features.npy")
    mapped = (frozen / np.linalg.norm(frozen, axis=1, keepdims=True) - state["encoder.context_mean"].numpy()) \
        @ state["encoder.context_map"].numpy()
    mapped /= np.linalg.norm(mapped, axis=1, keepdims=True)
    assert np.abs(f - mapped).max() > 1e-4  # training changed the encoder (float error: about 1e-6)


def test_context_map_is_the_lda_of_the_pretrained_features(pipe):
    """The Siamese stage's relation-context map (--context-map, the default) is model.lda_map of the
    pretrained encoder's r of the training data (the same r that encode.py --features wrote), each row
    L2-normalised, by context_key.npy: no label.  model.pt carries it, and predict.py's model applies it."""
    saved = torch.load(pipe.siamese / "model.pt", weights_only=True)
    assert saved["config"]["context_dims"] == MAPPED
    assert read_json(pipe.siamese / "meta.json")["settings"]["context_map"] is True
    frozen = load(pipe.train, "features.npy")
    mean, m = lda_map(frozen / np.linalg.norm(frozen, axis=1, keepdims=True), load(pipe.train, "context_key.npy"))
    np.testing.assert_allclose(saved["state"]["encoder.context_mean"].numpy(), mean, atol=1e-5)
    got = saved["state"]["encoder.context_map"].numpy()
    assert got.shape == m.shape == (R_DIM["both"], MAPPED)
    np.testing.assert_allclose(np.abs(got), np.abs(m), rtol=1e-3, atol=1e-3 * np.abs(m).max())  # eigenvector signs
    assert "context map fitted without labels" in pipe.logs["siamese"].stdout + pipe.logs["siamese"].stderr
    for d in (pipe.cluster, pipe.test_cluster, pipe.test_siamese):
        assert load(d, "features.npy").shape[1] == MAPPED


def test_no_context_map_and_no_context_groups(pipe, tmp_path):
    """--no-context-map trains r as in the paper (R_DIM wide, no map in model.pt); data in which no two
    instances share a relation context trains unmapped too, saying so; data encoded without
    context_key.npy gets an error that names the file and the way out."""
    plain = tmp_path / "plain"
    run("train_siamese.py", "--data", pipe.train, "--out", plain, *SIAMESE, "--no-context-map")
    saved = torch.load(plain / "model.pt", weights_only=True)
    assert saved["config"]["context_dims"] == 0 and not any("context" in k for k in saved["state"])
    assert load(plain, "features.npy").shape[1] == R_DIM["both"]
    alone = tmp_path / "train_alone"
    shutil.copytree(pipe.train, alone)
    np.save(alone / "context_key.npy", np.arange(len(load(pipe.train, "context_key.npy")), dtype=np.int32))
    p = run("train_siamese.py", "--data", alone, "--out", tmp_path / "s_alone", *SIAMESE)
    assert "no group holds two instances" in p.stdout + p.stderr and "left unmapped" in p.stdout + p.stderr
    assert load(tmp_path / "s_alone", "features.npy").shape[1] == R_DIM["both"]
    (alone / "context_key.npy").unlink()
    p = run("train_siamese.py", "--data", alone, "--out", tmp_path / "s_old", *SIAMESE, ok=False)
    assert p.returncode == 2 and "context_key.npy" in p.stderr and "--no-context-map" in p.stderr
    assert "Traceback" not in p.stderr


def test_train_siamese_warns_when_the_projections_collapse(pipe, tmp_path, monkeypatch, capsys):
    """The stage itself, with every r of a batch made one direction (scaled copies of its first row):
    the collapse measure drops below COLLAPSED and the warning is printed (the healthy run above has none)."""
    import train_siamese

    real = train_siamese.positive_views

    def one_direction(*args, **kwargs):
        r1, r2 = real(*args, **kwargs)  # [rows, D] each
        scale = torch.linspace(0.5, 1.5, r1.shape[0])[:, None]
        return r1[:1] * scale, r2[:1] * scale

    monkeypatch.setattr(train_siamese, "positive_views", one_direction)
    monkeypatch.setattr(sys, "argv", ["train_siamese.py", "--data", str(pipe.train), "--out", str(tmp_path / "s"),
                                      "--epochs", "1", "--batch-size", "32", "--quiet"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            train_siamese.main()
    finally:
        torch.set_num_threads(threads)
    assert read_json(tmp_path / "s" / "meta.json")["history"][0]["z_rank"] < train_siamese.COLLAPSED
    assert "WARNING: the projections are collapsing" in capsys.readouterr().out


def test_context_key_written_by_encode(pipe):
    """context_key.npy: int32 [N], the groups of data.context_groups over the encoded records, in order."""
    from data import read_instances
    index = load(pipe.train, "index.npy")
    groups = load(pipe.train, "context_key.npy")
    assert groups.dtype == np.int32 and groups.shape == index.shape
    instances = read_instances(str(pipe.train_file))
    assert groups.tolist() == data.context_groups([instances[i] for i in index])
    assert (groups >= 0).any() and (groups == -1).any()  # the embedded sentences have both kinds
    assert read_json(pipe.train / "meta.json")["context_covered"] == round(float((groups >= 0).mean()), 4)


def test_positives_key_trains_on_other_sentences(pipe, tmp_path):
    """--positives key against the default --positives dropout (the paper's views, the pipeline's run) with
    the same seed: the views differ, so do the Siamese features; both stages run with key.  Without
    context_key.npy, key says so in one line."""
    siamese, cluster = tmp_path / "siamese_key", tmp_path / "cluster_key"
    assert read_json(pipe.siamese / "meta.json")["settings"]["positives"] == "dropout"
    run("train_siamese.py", "--data", pipe.train, "--out", siamese, *SIAMESE, "--positives", "key")
    assert read_json(siamese / "meta.json")["settings"]["positives"] == "key"
    assert not np.allclose(load(siamese, "features.npy"), load(pipe.siamese, "features.npy"))
    run("mine_neighbors.py", siamese, "--k", MINE_K)
    run("train_cluster.py", "--data", pipe.train, "--init", siamese, "--out", cluster, *CLUSTER, "--positives", "key")
    assert load(cluster, "pred.npy").shape == load(pipe.cluster, "pred.npy").shape
    old = tmp_path / "train_old"
    shutil.copytree(pipe.train, old)
    (old / "context_key.npy").unlink()
    p = run("train_siamese.py", "--data", old, "--out", tmp_path / "s_old", *SIAMESE, "--positives", "key", ok=False)
    assert p.returncode == 2 and "context_key.npy" in p.stderr and "Traceback" not in p.stderr


def test_mine_neighbors_outputs(pipe):
    f = load(pipe.siamese, "features.npy")
    n = f.shape[0]
    nb, sims = load(pipe.siamese, "neighbors.npy"), load(pipe.siamese, "neighbor_sims.npy")
    assert nb.dtype == np.int32 and nb.shape == (n, MINE_K)
    assert sims.dtype == np.float32 and sims.shape == (n, MINE_K)
    assert ((nb >= 0) & (nb < n)).all()
    assert (nb != np.arange(n)[:, None]).all()                      # never itself
    assert all(len(set(row)) == MINE_K for row in nb.tolist())      # distinct
    assert (np.diff(sims, axis=1) <= 1e-6).all()                    # nearest first
    # the similarities are the cosines, and no other instance is closer than the K-th neighbour
    x = f / np.linalg.norm(f, axis=1, keepdims=True)
    cos = x @ x.T
    np.testing.assert_allclose(sims, np.take_along_axis(cos, nb.astype(np.int64), 1), atol=1e-4)
    np.fill_diagonal(cos, -np.inf)
    np.put_along_axis(cos, nb.astype(np.int64), -np.inf, 1)
    assert (cos.max(1) <= sims[:, -1] + 1e-4).all()
    assert read_json(pipe.siamese / "neighbors.json")["k"] == MINE_K


def test_train_cluster_outputs(pipe):
    n = read_json(pipe.train / "meta.json")["n_instances"]
    pred, probs, f = (load(pipe.cluster, x) for x in ("pred.npy", "probs.npy", "features.npy"))
    assert pred.dtype == np.int32 and pred.shape == (n,) and ((pred >= 0) & (pred < K)).all()
    assert probs.dtype == np.float32 and probs.shape == (n, K) and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (pred == probs.argmax(1)).all()
    assert f.dtype == np.float32 and f.shape == (n, MAPPED) and np.isfinite(f).all()
    assert (pipe.cluster / "model.pt").is_file() and (pipe.cluster / "checkpoint.pt").is_file()
    meta = read_json(pipe.cluster / "meta.json")
    assert meta["stage"] == "cluster" and meta["n_instances"] == n
    assert meta["cluster_sizes"] == np.bincount(pred, minlength=K).tolist()
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert "re-mined" in pipe.logs["cluster"].stdout  # with 2 epochs the neighbours are mined again


def head_probs(run_dir, feats):
    """The clustering head of run_dir/model.pt applied to features: its own probabilities, before any vote."""
    m, _ = training.load_model(str(Path(run_dir) / "model.pt"))
    with torch.no_grad():
        return m.cluster_head(torch.from_numpy(np.asarray(feats))).softmax(-1).numpy()


def test_train_cluster_probs_are_the_heads_after_the_knn_vote(pipe):
    """probs.npy is the refitted head's probabilities smoothed twice (--vote-steps 2, the default) over the
    MINE_K nearest neighbours of the final features, each step the mean over an instance and its
    neighbours, computed here by brute force."""
    f, probs = load(pipe.cluster, "features.npy"), load(pipe.cluster, "probs.npy")
    assert read_json(pipe.cluster / "meta.json")["vote"] == {"steps": 2, "neighbors": MINE_K}
    cos = f @ f.T
    np.fill_diagonal(cos, -np.inf)
    nb = np.argsort(-cos, axis=1, kind="stable")[:, :MINE_K]
    p = head_probs(pipe.cluster, f)
    before = p.argmax(1)
    for _ in range(2):
        p = np.stack([(p[i] + p[nb[i]].sum(0)) / (MINE_K + 1) for i in range(len(p))])
    np.testing.assert_allclose(probs, p, atol=1e-5)
    assert f"{int((probs.argmax(1) != before).sum())} of {len(f)} instances change cluster" in pipe.logs["cluster"].stdout


def test_training_leaves_embeddings_alone(pipe):
    """--train-layers 2 (the default) trains both layers of the tiny encoder, but not its embeddings."""
    siamese = torch.load(pipe.siamese / "model.pt", weights_only=True)["state"]
    cluster = torch.load(pipe.cluster / "model.pt", weights_only=True)["state"]
    emb = "encoder.bert.embeddings.word_embeddings.weight"
    assert torch.equal(siamese[emb], cluster[emb])
    top = "encoder.bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(siamese[top], cluster[top])


def test_train_cluster_repeatable(pipe, tmp_path):
    out = tmp_path / "cluster_again"
    run("train_cluster.py", "--data", pipe.train, "--init", pipe.siamese, "--out", out, *CLUSTER)
    for name in ("pred.npy", "probs.npy", "features.npy"):
        assert np.array_equal(load(out, name), load(pipe.cluster, name)), name


def test_training_reads_no_labels(pipe, tmp_path):
    """Training with labels.npy and label_names.json deleted gives exactly the same results."""
    train = tmp_path / "train_nolabels"
    shutil.copytree(pipe.train, train)
    (train / "labels.npy").unlink()
    (train / "label_names.json").unlink()
    siamese, cluster = tmp_path / "siamese", tmp_path / "cluster"
    run("train_siamese.py", "--data", train, "--out", siamese, *SIAMESE)
    mined = run("mine_neighbors.py", siamese, "--k", MINE_K)
    assert "purity" not in mined.stdout and "purity" in pipe.logs["mine"].stdout
    run("train_cluster.py", "--data", train, "--init", siamese, "--out", cluster, *CLUSTER)
    assert np.array_equal(load(siamese, "features.npy"), load(pipe.siamese, "features.npy"))
    assert np.array_equal(load(siamese, "neighbors.npy"), load(pipe.siamese, "neighbors.npy"))
    for name in ("pred.npy", "probs.npy", "features.npy"):
        assert np.array_equal(load(cluster, name), load(pipe.cluster, name)), name



def copy_run_without_outputs(src, dst):
    """A training directory as an interrupted run leaves it after its last checkpoint: everything but
    model.pt and the output arrays."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.pt", "features.npy", "probs.npy", "pred.npy"))
    assert (dst / "checkpoint.pt").is_file() and not (dst / "model.pt").exists()


def test_train_siamese_resume_after_last_epoch(pipe, tmp_path):
    """The `pipe` run's outputs lost after its last checkpoint: --resume skips training and writes the
    same features and history as the uninterrupted run."""
    b = tmp_path / "siamese_b"
    copy_run_without_outputs(pipe.siamese, b)
    resumed = run("train_siamese.py", "--data", pipe.train, "--out", b, *SIAMESE, "--resume")
    assert "resumed after epoch 2" in resumed.stdout
    assert "epoch 1/" not in resumed.stdout and "epoch 2/" not in resumed.stdout  # no training
    # the context map comes from the checkpoint: no pretrained pass to fit it again
    assert f"context map: {LDA_DIMS} dimensions, from the checkpoint" in resumed.stdout
    assert "context map fitted" not in resumed.stdout + resumed.stderr
    assert np.array_equal(load(b, "features.npy"), load(pipe.siamese, "features.npy"))
    assert read_json(b / "meta.json")["history"] == read_json(pipe.siamese / "meta.json")["history"]


def test_train_siamese_resume_refuses_other_settings(pipe, tmp_path):
    b = tmp_path / "siamese_b"
    copy_run_without_outputs(pipe.siamese, b)
    p = run("train_siamese.py", "--data", pipe.train, "--out", b, *SIAMESE, "--lr", "1e-4", "--resume", ok=False)
    assert p.returncode != 0 and "rerun without --resume" in p.stderr


def test_train_cluster_resume_after_last_epoch(pipe, tmp_path):
    b = tmp_path / "cluster_b"
    copy_run_without_outputs(pipe.cluster, b)
    resumed = run("train_cluster.py", "--data", pipe.train, "--init", pipe.siamese, "--out", b, *CLUSTER,
                  "--resume")
    assert "resumed after epoch 2" in resumed.stdout
    for name in ("pred.npy", "probs.npy", "features.npy"):
        assert np.array_equal(load(b, name), load(pipe.cluster, name)), name
    assert read_json(b / "meta.json")["history"] == read_json(pipe.cluster / "meta.json")["history"]


# ---- predict.py ---------------------------------------------------------------------------------------


def test_predict_on_test(pipe):
    n = read_json(pipe.test / "meta.json")["n_instances"]
    assert n == len(pipe.test_records)
    pred, probs, f = (load(pipe.test_cluster, x) for x in ("pred.npy", "probs.npy", "features.npy"))
    assert pred.dtype == np.int32 and pred.shape == (n,) and ((pred >= 0) & (pred < K)).all()
    assert probs.dtype == np.float32 and probs.shape == (n, K)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (pred == probs.argmax(1)).all()
    assert f.dtype == np.float32 and f.shape == (n, MAPPED) and np.isfinite(f).all()
    meta = read_json(pipe.test_cluster / "meta.json")
    assert meta["stage"] == "predict" and meta["model_stage"] == "cluster" and meta["n_instances"] == n
    # the Siamese model gives features only
    fs = load(pipe.test_siamese, "features.npy")
    assert fs.dtype == np.float32 and fs.shape == (n, MAPPED)
    assert not (pipe.test_siamese / "pred.npy").exists() and not (pipe.test_siamese / "probs.npy").exists()


def test_predict_on_training_data_reproduces_training_outputs(pipe, tmp_path):
    """model.pt, rebuilt offline by predict.py, is the model that wrote the training stage's outputs; and a
    new instance's probabilities are one more step of the kNN vote: the head's own averaged with those of
    its MINE_K nearest training instances in the training stage's probs.npy (brute force here; an
    instance of the training data finds itself first)."""
    out = tmp_path / "again"
    run("predict.py", "--model", pipe.cluster, "--data", pipe.train, "--out", out)
    f, train_probs = load(pipe.cluster, "features.npy"), load(pipe.cluster, "probs.npy")
    np.testing.assert_allclose(load(out, "features.npy"), f, atol=1e-5)
    nearest = np.argsort(-(f @ f.T), axis=1, kind="stable")[:, :MINE_K]
    assert (nearest[:, 0] == np.arange(len(f))).mean() > 0.95
    expected = (head_probs(pipe.cluster, f) + train_probs[nearest].sum(1)) / (MINE_K + 1)
    np.testing.assert_allclose(load(out, "probs.npy"), expected, atol=1e-5)
    assert (load(out, "pred.npy") == load(pipe.cluster, "pred.npy")).mean() > 0.9


def test_predict_without_the_vote_gives_the_heads_own_probabilities(pipe, tmp_path):
    """--vote-steps 0: probs.npy of both stages is the head's own softmax, and predict.py adds no vote."""
    cluster, again = tmp_path / "cluster", tmp_path / "again"
    run("train_cluster.py", "--data", pipe.train, "--init", pipe.siamese, "--out", cluster, *CLUSTER,
        "--vote-steps", "0")
    f = load(cluster, "features.npy")
    np.testing.assert_allclose(load(cluster, "probs.npy"), head_probs(cluster, f), atol=1e-5)
    assert read_json(cluster / "meta.json")["vote"]["steps"] == 0
    run("predict.py", "--model", cluster, "--data", pipe.test, "--out", again)
    np.testing.assert_allclose(load(again, "probs.npy"), head_probs(cluster, load(again, "features.npy")), atol=1e-5)
    assert run("train_cluster.py", "--data", pipe.train, "--init", pipe.siamese, "--out", tmp_path / "bad",
               *CLUSTER, "--vote-steps", "-1", ok=False).returncode != 0


def test_predict_refuses_other_marker_vocabulary(pipe, tmp_path):
    records = [dict(r) for r in pipe.test_records]
    records[0]["subj_type"] = "ANIMAL"
    path = tmp_path / "animal.json"
    path.write_text(json.dumps(records), encoding="utf-8")

    # encoded on its own, its marker vocabulary has <h:ANIMAL>: predict.py must refuse it
    alone = tmp_path / "alone"
    run("encode.py", path, "--out", alone, "--model", pipe.model)
    assert "<h:ANIMAL>" in read_json(alone / "meta.json")["markers"]
    refused = run("predict.py", "--model", pipe.cluster, "--data", alone, "--out", tmp_path / "p1", ok=False)
    assert refused.returncode != 0
    assert "--tokenizer-from" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "p1" / "pred.npy").exists()

    # encoded with --tokenizer-from, the unknown type is marked untyped and predict.py accepts it
    shared = tmp_path / "shared"
    enc = run("encode.py", path, "--out", shared, "--tokenizer-from", pipe.train)
    assert "ANIMAL" in enc.stdout
    meta = check_encoded(shared, records)
    assert meta["markers"] == read_json(pipe.train / "meta.json")["markers"]
    tok = tokenizer_of(shared)
    assert tok.convert_ids_to_tokens(int(load(shared, "input_ids.npy")[0, load(shared, "head_pos.npy")[0]])) == "<h>"
    run("predict.py", "--model", pipe.cluster, "--data", shared, "--out", tmp_path / "p2")
    assert load(tmp_path / "p2", "pred.npy").shape == (len(records),)


# ---- evaluate.py --------------------------------------------------------------------------------------


ROWS = ["one cluster per type pair", "type pairs held to K", "clustering head (the method)",
        "k-means, final features", "training-part k-means, final features", "k-means, Siamese features",
        "training-part k-means, Siamese features", "k-means, frozen encoder", "k-means, frozen + context LDA"]


def test_evaluate_table_and_metrics(pipe):
    """The printed table is metrics.json, row by row and figure by figure (recomputed from the arrays
    in the next test)."""
    m = read_json(pipe.test_cluster / "metrics.json")
    assert m["k"] == K and m["n"] == len(pipe.test_records)
    assert [r["name"] for r in m["rows"]] == ROWS
    printed = {}
    for line in pipe.logs["evaluate"].stdout.splitlines():
        name = next((n for n in ROWS if line.startswith(n)), None)
        if name:
            printed[name] = [float(v) for v in line[len(name):].replace("|", " ").split()]
    assert list(printed) == ROWS
    keys = ("b3_precision", "b3_recall", "b3_f1", "v_homogeneity", "v_completeness", "v_measure", "ari")
    for r in m["rows"]:
        assert printed[r["name"]] == [r["n_clusters"]] + [round(100 * r[k], 1) for k in keys], r["name"]
        assert 0 <= r["b3_f1"] <= 1 and 0 <= r["v_measure"] <= 1 and -1 <= r["ari"] <= 1


def test_evaluate_scores_are_recomputable(pipe):
    """The rows are metrics.score of the gold labels against each clustering, recomputed here."""
    from model import kmeans

    labels = load(pipe.test, "labels.npy")
    rows = {r["name"]: r for r in read_json(pipe.test_cluster / "metrics.json")["rows"]}
    expected = {"one cluster per type pair": load(pipe.test, "type_pair.npy"),
                "clustering head (the method)": load(pipe.test_cluster, "pred.npy")}
    for name, d in (("k-means, final features", pipe.test_cluster), ("k-means, Siamese features", pipe.test_siamese),
                    ("k-means, frozen encoder", pipe.test)):
        f = load(d, "features.npy")
        expected[name] = kmeans(f / np.linalg.norm(f, axis=1, keepdims=True), K, 0)
    # k-means fitted to the training part's features of the same kind, this part assigned to the nearest
    # centroid by squared Euclidean distance (as model.kmeans assigns), computed row by row
    for name, model, d in (("training-part k-means, final features", pipe.cluster, pipe.test_cluster),
                           ("training-part k-means, Siamese features", pipe.siamese, pipe.test_siamese)):
        t, f = load(model, "features.npy"), load(d, "features.npy")
        t, f = t / np.linalg.norm(t, axis=1, keepdims=True), f / np.linalg.norm(f, axis=1, keepdims=True)
        a = kmeans(t, K, 0)
        c = np.array([t[a == i].mean(0) for i in sorted(set(a.tolist()))])
        dist = np.array([[np.sum((row - centre) ** 2) for centre in c] for row in f])
        expected[name] = dist.argmin(1)
        assert len(t) == len(pipe.train_records) != len(f)
    # the label-free linear baseline: LDA of the training file's context groups, by hand
    x, g = load(pipe.train, "features.npy").astype(np.float64), load(pipe.train, "context_key.npy")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    keep = np.isin(g, [v for v in set(g.tolist()) if v >= 0 and (g == v).sum() > 1])
    within = np.concatenate([x[g == v] - x[g == v].mean(0) for v in sorted(set(g[keep].tolist()))])
    sw = within.T @ within / len(within)
    sw += 3.0 * np.trace(sw) / len(sw) * np.eye(len(sw))
    st = np.cov(x.T, bias=True)
    vals, vecs = scipy.linalg.eigh(st, sw)  # the generalised problem, solved by scipy instead of by whitening
    f = load(pipe.test, "features.npy").astype(np.float64)
    z = (f / np.linalg.norm(f, axis=1, keepdims=True) - x.mean(0)) @ vecs[:, ::-1][:, :64]
    expected["k-means, frozen + context LDA"] = kmeans(z / np.linalg.norm(z, axis=1, keepdims=True), K, 0)
    for name, pred in expected.items():
        s = score(labels, pred)
        for key in ("b3_f1", "b3_precision", "b3_recall", "v_homogeneity", "v_completeness", "v_measure", "ari",
                    "n_clusters"):
            assert rows[name][key] == pytest.approx(s[key], abs=1e-9), (name, key)
    # gold grouping by type pair has B3 recall 1: each relation has one type pair
    assert rows["one cluster per type pair"]["b3_recall"] == pytest.approx(1.0)


def test_evaluate_lda_from_needs_an_encoded_training_directory(pipe, tmp_path):
    p = run("evaluate.py", pipe.test, "--k", K, "--lda-from", pipe.siamese, "--out", tmp_path / "m.json", ok=False)
    assert p.returncode == 2 and str(pipe.siamese) in p.stderr and not (tmp_path / "m.json").exists()
    old = tmp_path / "old_train"
    shutil.copytree(pipe.train, old)
    (old / "context_key.npy").unlink()
    p = run("evaluate.py", pipe.test, "--k", K, "--lda-from", old, "--out", tmp_path / "m.json", ok=False)
    assert p.returncode == 2 and "context_key.npy" in p.stderr and not (tmp_path / "m.json").exists()


def test_evaluate_refuses_mixed_data(pipe, tmp_path):
    p = run("evaluate.py", pipe.cluster, pipe.test, "--k", K, "--out", tmp_path / "m.json", ok=False)
    assert p.returncode != 0 and "different data" in p.stderr
    assert not (tmp_path / "m.json").exists()


# ---- run_all.sh ---------------------------------------------------------------------------------------


def test_run_all_end_to_end(tiny_model, tiny_data, tmp_path):
    """The whole chain, here with the option --pooling sumdiff (the stage tests cover the default)."""
    train, test = tiny_data
    out = tmp_path / "run"
    env = {**ENV, "PYTHON": sys.executable}
    p = subprocess.run(["bash", "run_all.sh", "--train", str(train), "--test", str(test), "--model", str(tiny_model),
                        "--k", str(K), "--siamese-epochs", "1", "--cluster-epochs", "1", "--pooling", "sumdiff",
                        "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, f"run_all.sh exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    for name in ("clustering head (the method)", "k-means, Siamese features", "k-means, frozen encoder",
                 "one cluster per type pair"):
        assert name in p.stdout
    m = read_json(out / "metrics.json")
    assert len(m["rows"]) == 9 and [r["name"] for r in m["rows"]] == ROWS
    assert m["k"] == K and m["n"] == len(read_json(test))
    for d in ("train", "test", "siamese", "cluster", "test_cluster", "test_siamese"):
        assert (out / d / "meta.json").is_file(), d
    assert read_json(out / "train" / "meta.json")["pooling"] == read_json(out / "test" / "meta.json")["pooling"] \
        == training.load_model(str(out / "cluster" / "model.pt"))[1]["pooling"] == "sumdiff"


def test_run_all_unknown_option():
    p = subprocess.run(["bash", "run_all.sh", "--bogus", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=ENV)
    assert p.returncode != 0
    assert "unknown option --bogus" in p.stderr


# ---- the real benchmark data beside the project (skipped when absent) ---------------------------------


def shared_data():
    candidates = [os.environ.get("URE_SHARED_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "redocred_dev.json").is_file() and (Path(c) / "fewrel_val_wiki.json").is_file():
            return Path(c)
    pytest.skip("the shared benchmark data (../shared/data or $URE_SHARED_DATA) is not here")


def test_real_data_readers():
    d = shared_data()
    redocred = data.read_instances(d / "redocred_dev.json")
    assert len(redocred) == 4820
    assert all(x.head_type and x.tail_type for x in redocred)
    assert len({x.relation for x in redocred}) == 91
    fewrel = data.read_instances(d / "fewrel_val_wiki.json")
    assert len(fewrel) == 11200
    assert all(x.head_type is None and x.tail_type is None for x in fewrel)
    assert len({x.relation for x in fewrel}) == 16


def test_real_data_encode(tiny_model, tmp_path):
    d = shared_data()
    records = read_json(d / "redocred_dev.json")[:200]
    path = tmp_path / "redocred_200.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "redocred"
    run("encode.py", path, "--out", out, "--model", tiny_model, "--features")
    meta = check_encoded(out, records, features=True, check_text=False)
    assert meta["n_instances"] > 150
    assert len(read_json(out / "label_names.json")) == len({records[i]["relation"] for i in load(out, "index.npy")})
