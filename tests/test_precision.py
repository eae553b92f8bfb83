"""--precision bf16: every stage that runs the encoder, on the tiny BERT, against fp32.

The features of a bf16 run are float32 files of the fp32 run's shape and point the same way (cosine
above 0.99 per row); each stage's meta.json records the precision; a bad value stops the stage at the
command line; the warning where the machine has no bf16 matrix instructions is one line.
"""
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

import training
from model import LDA_DIMS
from test_pipeline import ENV, REPO, check_encoded, load, read_json, run

SMALL = ["--epochs", "1", "--batch-size", "16", "--seed", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, tiny_data):
    """encode (fp32 and bf16), then the training stages and predict in bf16."""
    out = tmp_path_factory.mktemp("precision")
    train_file, test_file = tiny_data
    r = SimpleNamespace(**{name: out / name for name in ("fp32", "bf16", "test", "siamese", "cluster", "pred")})
    r.records = read_json(train_file)
    run("encode.py", train_file, "--out", r.fp32, "--model", tiny_model, "--features")
    run("encode.py", train_file, "--out", r.bf16, "--model", tiny_model, "--features", "--precision", "bf16")
    run("encode.py", test_file, "--out", r.test, "--tokenizer-from", r.bf16)
    run("train_siamese.py", "--data", r.bf16, "--out", r.siamese, "--precision", "bf16", *SMALL)
    run("mine_neighbors.py", r.siamese, "--k", 5)
    run("train_cluster.py", "--data", r.bf16, "--init", r.siamese, "--out", r.cluster, "--k", 4,
        "--precision", "bf16", *SMALL)
    run("predict.py", "--model", r.cluster, "--data", r.test, "--out", r.pred, "--precision", "bf16")
    return r


def test_encode_bf16_features_are_float32_and_close_to_fp32(runs):
    meta = check_encoded(runs.bf16, runs.records, features=True)
    assert meta["precision"] == "bf16" and read_json(runs.fp32 / "meta.json")["precision"] == "fp32"
    a, b = load(runs.fp32, "features.npy"), load(runs.bf16, "features.npy")
    assert b.dtype == np.float32 and b.shape == a.shape
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99, cos.min()
    assert not np.array_equal(a, b)  # bf16 did run


def test_training_stages_and_predict_in_bf16(runs):
    n = read_json(runs.bf16 / "meta.json")["n_instances"]
    for d, stage in ((runs.siamese, "siamese"), (runs.cluster, "cluster")):
        meta = read_json(d / "meta.json")
        assert meta["stage"] == stage and meta["settings"]["precision"] == "bf16"
        f = load(d, "features.npy")
        assert f.dtype == np.float32 and f.shape == (n, LDA_DIMS) and np.isfinite(f).all()  # r, context-mapped
        assert all(np.isfinite(h["loss"]) for h in meta["history"])
    probs = load(runs.cluster, "probs.npy")
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)
    m = read_json(runs.pred / "meta.json")
    assert m["precision"] == "bf16"
    t = read_json(runs.test / "meta.json")["n_instances"]
    assert load(runs.pred, "features.npy").shape == (t, LDA_DIMS) and load(runs.pred, "pred.npy").shape == (t,)
    assert load(runs.pred, "probs.npy").dtype == np.float32


@pytest.mark.parametrize("stage", ["encode.py x.json", "train_siamese.py --data d --out o", "predict.py --model m "
                                   "--data d --out o"])
def test_bad_precision_is_refused_by_the_command_line(stage):
    p = run(*stage.split(), "--precision", "fp16", ok=False)
    assert p.returncode == 2 and "argument --precision: invalid choice: 'fp16'" in p.stderr


def test_run_all_passes_precision_on():
    p = subprocess.run(["bash", "run_all.sh", "--precision", "fp8"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=ENV)
    assert p.returncode != 0 and "--precision: invalid choice: 'fp8'" in p.stderr


@pytest.mark.parametrize("fast", [True, False])
def test_warning_where_bf16_is_slow(monkeypatch, fast):
    monkeypatch.setattr(training, "fast_bf16", lambda: fast)
    lines = []
    training.check_precision("bf16", lines.append)
    training.check_precision("fp32", lines.append)
    assert len(lines) == (0 if fast else 1)
    assert fast or "bf16 will be slow here" in lines[0]
