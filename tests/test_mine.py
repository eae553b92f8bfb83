"""Tests for mine_neighbors.py: exact top-K cosine neighbours against brute force, purity, and the
approximate inverted file (--index ivf) against the exact search."""
import json

import numpy as np
import pytest

from data import DataError
from mine_neighbors import mine, mine_ivf, purity
from test_pipeline import run


def brute_force(x, k):
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, axis=1)


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(features):
    return brute_force(features, 7)


@pytest.mark.parametrize("chunk", [1, 7, 64, 300, 4096])
def test_mine_equals_brute_force(features, reference, chunk):
    idx, sims = mine(features, 7, chunk=chunk)
    ref_idx, ref_sims = reference
    assert idx.shape == (300, 7) and idx.dtype == np.int32
    assert sims.shape == (300, 7) and sims.dtype == np.float32
    assert np.allclose(sims, ref_sims, atol=1e-5)
    assert np.array_equal(idx, ref_idx)
    assert not (idx == np.arange(300)[:, None]).any()  # never itself
    assert np.all(np.diff(sims, axis=1) <= 0)          # nearest first


def test_mine_does_not_depend_on_chunking(features):
    a = mine(features, 7, chunk=13)
    b = mine(features, 7, chunk=300)
    assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], atol=1e-6)


def test_mine_is_scale_invariant(features):
    scales = np.random.default_rng(1).uniform(0.1, 10.0, size=(300, 1)).astype(np.float32)
    a, sa = mine(features, 5, chunk=64)
    b, sb = mine(features * scales, 5, chunk=64)
    assert np.array_equal(a, b) and np.allclose(sa, sb, atol=1e-5)


def test_mine_duplicates_are_neighbours_but_not_self():
    x = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
    x[17] = x[5]
    x[30] = 3.0 * x[5]  # same direction
    idx, sims = mine(x, 3, chunk=16)
    assert set(idx[5, :2].tolist()) == {17, 30} and np.allclose(sims[5, :2], 1.0, atol=1e-5)
    assert set(idx[17, :2].tolist()) == {5, 30}
    assert set(idx[30, :2].tolist()) == {5, 17}
    assert not (idx == np.arange(50)[:, None]).any()


def test_mine_among_other_rows_equals_brute_force(features):
    """With `among`, each row's neighbours among another set of rows (predict.py's nearest training
    instances), nearest first, by cosine; a row equal to one of them finds it first."""
    base = np.random.default_rng(4).normal(size=(120, 16)).astype(np.float32)
    base[7] = 2.5 * features[0]
    idx, sims = mine(features, 6, chunk=37, among=base)
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    y = base / np.linalg.norm(base, axis=1, keepdims=True)
    s = x.astype(np.float64) @ y.T.astype(np.float64)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :6]
    assert idx.shape == (300, 6) and idx.dtype == np.int32 and sims.dtype == np.float32
    assert np.array_equal(idx, ref) and np.allclose(sims, np.take_along_axis(s, ref, 1), atol=1e-5)
    assert idx[0, 0] == 7 and np.isclose(sims[0, 0], 1.0, atol=1e-5)
    assert mine(base, 120, among=base)[0].shape == (120, 120)  # all of them, itself included
    with pytest.raises(DataError, match="K = 121 neighbours among 120 instances"):
        mine(features, 121, among=base)


def test_mine_k_all_others():
    x = np.random.default_rng(3).normal(size=(6, 4))
    idx, sims = mine(x, 5, chunk=4)
    for i in range(6):
        assert sorted(idx[i].tolist()) == [j for j in range(6) if j != i]
    assert np.isfinite(sims).all()


@pytest.mark.parametrize("k", [10, 11, 0])
def test_mine_bad_k(k):
    x = np.random.default_rng(4).normal(size=(10, 4))
    with pytest.raises(DataError) as e:
        mine(x, k)
    assert f"K = {k}" in str(e.value) and "10" in str(e.value)


def test_purity_hand_computed():
    labels = np.array(["a", "a", "b", "b", "c"])
    neighbors = np.array([[1, 2],   # a: a yes, b no      -> 1
                          [0, 4],   # a: a yes, c no      -> 1
                          [3, 3],   # b: b yes, b yes     -> 2
                          [0, 1],   # b: a no,  a no      -> 0
                          [0, 2]])  # c: no, no           -> 0
    assert purity(neighbors, labels) == pytest.approx(4 / 10)
    assert isinstance(purity(neighbors, labels), float)
    assert purity(neighbors, [7, 7, 7, 7, 7]) == 1.0
    assert purity(neighbors, list(range(5))) == 0.0


# ---- --index ivf: the approximate inverted file ------------------------------------------------------


@pytest.fixture(scope="module")
def clustered():
    """2,000 rows around 40 centres in 32 dimensions: neighbours that an inverted file can find."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 32))
    return (centres[rng.integers(40, size=2000)] + 0.6 * rng.normal(size=(2000, 32))).astype(np.float32)


def test_ivf_searching_every_cell_is_the_exact_search(clustered):
    idx, sims = mine_ivf(clustered, 10, nlist=30, nprobe=30)
    ref_idx, ref_sims = mine(clustered, 10)
    assert idx.dtype == np.int32 and sims.dtype == np.float32 and idx.shape == sims.shape == (2000, 10)
    assert np.allclose(sims, ref_sims, atol=1e-5)
    assert (idx == ref_idx).mean() > 0.99  # the rest: near ties, ordered by rounding


def test_ivf_recall_and_order(clustered):
    idx, sims = mine_ivf(clustered, 10, nprobe=8)   # 8 of 179 cells
    ref, _ = mine(clustered, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref)])
    assert recall > 0.9, recall
    assert not (idx == np.arange(2000)[:, None]).any()
    assert np.all(np.diff(sims, axis=1) <= 0)
    again, _ = mine_ivf(clustered, 10, nprobe=8)
    assert np.array_equal(idx, again)  # seeded


def test_ivf_too_few_in_the_probed_cells(clustered):
    with pytest.raises(DataError) as e:
        mine_ivf(clustered[:400], 30, nlist=80, nprobe=1)
    assert "raise --nprobe or use --index exact" in str(e.value)


def test_mine_neighbors_index_ivf_command(tiny_model, tiny_data, tmp_path):
    run("encode.py", tiny_data[0], "--out", tmp_path, "--model", tiny_model, "--features")
    run("mine_neighbors.py", tmp_path, "--k", 5)
    exact = np.load(tmp_path / "neighbor_sims.npy")
    run("mine_neighbors.py", tmp_path, "--k", 5, "--index", "ivf", "--nlist", 10, "--nprobe", 10)
    assert np.allclose(np.load(tmp_path / "neighbor_sims.npy"), exact, atol=1e-5)  # every cell searched: exact
    meta = json.loads((tmp_path / "neighbors.json").read_text())
    assert (meta["index"], meta["nlist"], meta["nprobe"]) == ("ivf", 10, 10)
