"""bench/ceiling.py: the linear look at r (a diagnostic that reads labels), on data built so that the
relation lies along low-variance directions and a nuisance (who the entities are) along high-variance ones."""
import importlib.util
import json

import numpy as np
import pytest

from data import DataError
from model import lda_map
from test_pipeline import REPO, run

spec = importlib.util.spec_from_file_location("ceiling", REPO / "bench" / "ceiling.py")
ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ceiling)


def nuisance_data(n=600, seed=0):
    """4 relations on 4 directions of small spread; 4 nuisance clusters on 20 directions of large spread,
    drawn independently of the relation; 'context groups' of 5 instances that share a relation."""
    rng = np.random.default_rng(seed)
    relation = rng.integers(4, size=n)
    nuisance = rng.integers(4, size=n)
    x = np.zeros((n, 40))
    x[:, :4] = np.eye(4)[relation] + 0.05 * rng.normal(size=(n, 4))
    x[:, 4:24] = 3 * rng.normal(size=(4, 20))[nuisance] + 0.3 * rng.normal(size=(n, 20))
    x[:, 24:] = 0.05 * rng.normal(size=(n, 16))
    groups = np.full(n, -1)
    for r in range(4):
        members = np.flatnonzero(relation == r)[:100]
        groups[members] = r * 100 + np.arange(len(members)) // 5
    return x, relation, groups


def test_lda_finds_the_relation_that_variance_hides():
    x, relation, groups = nuisance_data()
    from metrics import b3
    from model import kmeans
    base = b3(relation, kmeans(ceiling.normalise(x), 4, 0))[2]
    fit = lda_map(ceiling.normalise(x), groups, dims=4, shrink=0.01)  # label-free: the context groups only
    lda = b3(relation, kmeans(ceiling.lda_features(ceiling.normalise(x), fit), 4, 0))[2]
    assert base < 0.5 < 0.9 < lda
    assert fit[0].shape == (40,) and fit[1].shape == (40, 4)


def test_lda_needs_a_group_of_two():
    x, _, _ = nuisance_data(50)
    with pytest.raises(DataError, match="no group holds two instances"):
        lda_map(x, np.arange(50))


def test_probe_accuracy_is_held_out():
    x, relation, _ = nuisance_data()
    assert ceiling.probe_accuracy(ceiling.normalise(x), relation) > 0.95
    shuffled = np.random.default_rng(1).permutation(relation)  # nothing to learn: chance, not memory
    assert ceiling.probe_accuracy(ceiling.normalise(x), shuffled) < 0.4


def test_the_bench_end_to_end(tmp_path):
    x, relation, groups = nuisance_data()
    d = tmp_path / "train"
    d.mkdir()
    np.save(d / "features.npy", x.astype(np.float32))
    np.save(d / "labels.npy", relation.astype(np.int32))
    np.save(d / "context_key.npy", groups.astype(np.int32))
    out = tmp_path / "ceiling.json"
    p = run("bench/ceiling.py", d, "--k", "4", "--dims", "4", "--shrink", "0.01", "--out", out)
    r = json.loads(out.read_text())[str(d)]
    assert r["kmeans_r"] < 0.5 and r["kmeans_context_lda"] > 0.9 and r["kmeans_gold_lda_half"] > 0.9
    assert r["probe_accuracy"] > 0.95 and r["context_coverage"] == pytest.approx((groups >= 0).mean())
    assert "CEILINGS" in p.stdout


def test_the_bench_says_what_is_missing(tmp_path):
    x, relation, _ = nuisance_data(50)
    d = tmp_path / "old"
    d.mkdir()
    np.save(d / "features.npy", x.astype(np.float32))
    np.save(d / "labels.npy", relation.astype(np.int32))
    p = run("bench/ceiling.py", d, "--k", "4", "--out", tmp_path / "c.json", ok=False)
    assert p.returncode == 2 and "no context_key.npy" in p.stderr and str(d) in p.stderr
    assert not (tmp_path / "c.json").exists()
