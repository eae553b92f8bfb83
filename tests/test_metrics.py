"""Tests for metrics.py: brute-force definitions, scikit-learn, invariances, edge cases."""
import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from metrics import ari, b3, contingency, score, v_measure

ATOL = 1e-9


# ---- brute-force reference definitions (plain Python loops) -------------------------

def b3_brute(labels, pred):
    n = len(labels)
    p = r = 0.0
    for i in range(n):
        cluster = [k for k in range(n) if pred[k] == pred[i]]
        klass = [k for k in range(n) if labels[k] == labels[i]]
        both = [k for k in cluster if labels[k] == labels[i]]
        p += len(both) / len(cluster) / n
        r += len(both) / len(klass) / n
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def ari_brute(labels, pred):
    pairs = list(combinations(range(len(labels)), 2))
    same_c = [labels[i] == labels[j] for i, j in pairs]
    same_k = [pred[i] == pred[j] for i, j in pairs]
    index = sum(c and k for c, k in zip(same_c, same_k))
    expected = sum(same_c) * sum(same_k) / len(pairs) if pairs else 0.0
    max_index = (sum(same_c) + sum(same_k)) / 2
    return 1.0 if max_index == expected else (index - expected) / (max_index - expected)


def v_brute(labels, pred):
    n = len(labels)
    p_c = {c: m / n for c, m in Counter(labels).items()}
    p_k = {k: m / n for k, m in Counter(pred).items()}
    p_ck = {ck: m / n for ck, m in Counter(zip(labels, pred)).items()}
    h_c = -sum(p * math.log(p) for p in p_c.values())
    h_k = -sum(p * math.log(p) for p in p_k.values())
    h_c_k = -sum(p * math.log(p / p_k[k]) for (c, k), p in p_ck.items())
    h_k_c = -sum(p * math.log(p / p_c[c]) for (c, k), p in p_ck.items())
    h = 1.0 if h_c == 0 else 1 - h_c_k / h_c
    c = 1.0 if h_k == 0 else 1 - h_k_c / h_k
    return h, c, (2 * h * c / (h + c) if h + c else 0.0)


def random_labelings(count, seed=0, max_n=60):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, max_n + 1))
        yield (rng.integers(0, rng.integers(1, 9), n).tolist(),
               rng.integers(0, rng.integers(1, 9), n).tolist())


def rename(x, seed):
    """Map ids through a random injection onto large and negative integers."""
    ids = np.unique(x)
    new = np.random.default_rng(seed).choice(10**12, len(ids), replace=False) - 5 * 10**11
    return new[np.searchsorted(ids, x)]


# ---- correctness ---------------------------------------------------------------------

def test_against_brute_force():
    for labels, pred in random_labelings(200):
        assert b3(labels, pred) == pytest.approx(b3_brute(labels, pred), abs=ATOL)
        assert v_measure(labels, pred) == pytest.approx(v_brute(labels, pred), abs=ATOL)
        assert ari(labels, pred) == pytest.approx(ari_brute(labels, pred), abs=ATOL)


def test_against_sklearn():
    """scikit-learn is a test dependency (requirements-test.txt): the oracle runs in CI, never skipped."""
    import sklearn.metrics as skm

    rng = np.random.default_rng(1)
    cases = list(random_labelings(100, seed=2))
    cases += [(rng.integers(0, 30, 100_000), rng.integers(0, 20, 100_000)),
              (rng.integers(0, 5, 100_000), rng.integers(0, 2000, 100_000))]
    for labels, pred in cases:
        assert ari(labels, pred) == pytest.approx(skm.adjusted_rand_score(labels, pred), abs=ATOL)
        assert v_measure(labels, pred) == pytest.approx(
            skm.homogeneity_completeness_v_measure(labels, pred), abs=ATOL)


def test_contingency_table():
    cells, a, b, n = contingency([3, 3, -1, -1, 3], ["x", "y", "x", "x", "x"])
    assert sorted(cells) == [1.0, 2.0, 2.0] and cells.dtype == np.float64
    assert sorted(a) == [2.0, 3.0] and sorted(b) == [1.0, 4.0] and n == 5
    # sparse ids far apart (sort fallback) give the same table as compact ids
    y, p = np.arange(1000) % 7, np.arange(1000) % 11
    assert sorted(contingency(y * 10**15, p)[0]) == sorted(contingency(y, p)[0])


# ---- invariances and symmetries ------------------------------------------------------

def test_invariant_to_renaming_ids():
    for seed, (labels, pred) in enumerate(random_labelings(50, seed=3)):
        want = score(labels, pred)
        got = score(rename(labels, seed), rename(pred, seed + 1000))
        assert got == pytest.approx(want, abs=ATOL)


def test_symmetries():
    for labels, pred in random_labelings(50, seed=4):
        p, r, f = b3(labels, pred)
        assert b3(pred, labels) == pytest.approx((r, p, f), abs=ATOL)
        h, c, v = v_measure(labels, pred)
        assert v_measure(pred, labels) == pytest.approx((c, h, v), abs=ATOL)
        assert ari(pred, labels) == pytest.approx(ari(labels, pred), abs=ATOL)


def test_perfect_clustering():
    for seed, (labels, _) in enumerate(random_labelings(30, seed=5)):
        s = score(labels, rename(labels, seed))
        assert all(s[k] == pytest.approx(1.0) for k in s if k not in ("n", "n_classes", "n_clusters"))


# ---- edge cases ----------------------------------------------------------------------

def test_one_cluster():
    labels = [0, 0, 1, 1, 1, 2]
    p, r, _ = b3(labels, [9] * 6)
    assert r == 1.0 and p == pytest.approx((4 + 9 + 1) / 36)
    assert v_measure(labels, [9] * 6)[:2] == pytest.approx((0.0, 1.0), abs=ATOL)
    assert ari(labels, [9] * 6) == pytest.approx(0.0, abs=ATOL)
    assert score([4] * 6, [9] * 6)["ari"] == 1.0  # one class too: identical partitions


def test_all_singletons():
    labels = [0, 0, 1, 1, 1, 2]
    pred = [-5, 17, 3, 4, 10**9, 6]
    p, r, _ = b3(labels, pred)
    assert p == 1.0 and r == pytest.approx((1 / 2 * 2 + 1 / 3 * 3 + 1) / 6)
    assert v_measure(labels, pred)[0] == 1.0
    assert ari(labels, pred) == pytest.approx(0.0, abs=ATOL)
    assert ari(range(6), pred) == 1.0


def test_single_item():
    s = score([42], [-7])
    assert (s["n"], s["n_classes"], s["n_clusters"]) == (1, 1, 1)
    assert all(s[k] == 1.0 for k in s if not k.startswith("n"))


@pytest.mark.parametrize("fn", [contingency, b3, v_measure, ari, score])
def test_invalid_input(fn):
    with pytest.raises(ValueError, match="at least one item"):
        fn([], [])
    with pytest.raises(ValueError, match="3 and 2"):
        fn([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="1-D"):
        fn([[1, 2]], [[1, 2]])


def test_score_matches_individual_functions():
    labels, pred = np.random.default_rng(6).integers(0, 6, (2, 500))
    s = score(labels, pred)
    assert set(s) == {"b3_precision", "b3_recall", "b3_f1", "v_homogeneity", "v_completeness",
                      "v_measure", "ari", "n", "n_classes", "n_clusters"}
    assert (s["b3_precision"], s["b3_recall"], s["b3_f1"]) == b3(labels, pred)
    assert (s["v_homogeneity"], s["v_completeness"], s["v_measure"]) == v_measure(labels, pred)
    assert s["ari"] == ari(labels, pred)
    assert (s["n"], s["n_classes"], s["n_clusters"]) == (500, 6, 6)
    assert all(isinstance(s[k], float) for k in s if not k.startswith("n"))
    assert all(0.0 <= s[k] <= 1.0 for k in s if not k.startswith("n") and k != "ari")  # ARI may be < 0
    assert all(type(s[k]) is int for k in ("n", "n_classes", "n_clusters"))
