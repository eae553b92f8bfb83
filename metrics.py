"""Clustering metrics: B-cubed, V-measure and the adjusted Rand index.

All three are functions of the contingency table between the gold classes
C = {c_i} and the predicted clusters K = {k_j}:

    n_ij = |c_i & k_j|,   a_i = sum_j n_ij,   b_j = sum_i n_ij,   n = sum_ij n_ij.

The table is built once in O(n) time -- ids are relabelled to 0..m-1 with a
bincount, each item gets the combined code i * |K| + j, and one more bincount
counts the codes (np.unique if |C| |K| > n) -- and only its nonzero cells are
kept, so the table takes O(#nonzero cells) memory (O(n) scratch) however many
classes and clusters there are.  Ids
that are not integers in a range of O(n) values (strings, huge or sparse ints)
fall back to sorting with np.unique, O(n log n).  Every metric is then a few
vectorised sums over the nonzero cells and the marginals.

Edge cases (C = gold classes, K = predicted clusters):
  * one cluster:   B3 recall = 1, completeness = 1, ARI = 0 if |C| >= 2;
  * all singletons: B3 precision = 1, homogeneity = 1, ARI = 0 unless the
                    gold classes are singletons too;
  * a single item: every score is 1.0;
  * empty input:   ValueError (so are non-1-D input and a length mismatch).
"""
import math

import numpy as np


def _factorise(x):
    """Map ids to codes 0..m-1; return (codes, sizes of the m groups)."""
    if x.dtype.kind in "iub":
        lo, hi = int(x.min()), int(x.max())
        if hi - lo <= max(2 * x.size, 1 << 16) and hi < 2 ** 63:
            shifted = x.astype(np.int64) - lo
            counts = np.bincount(shifted)
            present = counts > 0
            if present.all():                      # ids already 0..m-1 (+ lo)
                return shifted, counts
            return (np.cumsum(present) - 1)[shifted], counts[present]
    _, codes, counts = np.unique(x, return_inverse=True, return_counts=True)
    return codes.astype(np.int64, copy=False), counts


def _table(labels, pred):
    """Sparse contingency table: (cells, rows, cols, a, b, n)."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    for name, x in (("labels", labels), ("pred", pred)):
        if x.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if len(labels) != len(pred):
        raise ValueError("labels and pred must have the same length, "
                         f"got {len(labels)} and {len(pred)}")
    if len(labels) == 0:
        raise ValueError("metrics need at least one item")
    ci, a = _factorise(labels)
    kj, b = _factorise(pred)
    n_cells = len(a) * len(b)
    code = ci * len(b) + kj                        # int64: no overflow below ~3e9 items
    if n_cells <= max(len(code), 1 << 20):
        counts = np.bincount(code, minlength=n_cells)
        code = np.flatnonzero(counts)
        cells = counts[code]
    else:
        code, cells = np.unique(code, return_counts=True)
    rows, cols = np.divmod(code, len(b))
    f8 = np.float64
    return cells.astype(f8), rows, cols, a.astype(f8), b.astype(f8), len(labels)


def contingency(labels, pred):
    """Nonzero cells n_ij, class sizes a_i, cluster sizes b_j (float64) and n."""
    cells, _, _, a, b, n = _table(labels, pred)
    return cells, a, b, n


def _b3(cells, rows, cols, a, b, n):
    p = float(np.sum(cells ** 2 / b[cols])) / n
    r = float(np.sum(cells ** 2 / a[rows])) / n
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def b3(labels, pred):
    """B-cubed (Bagga & Baldwin 1998), averaged over items.

        P  = (1/n) sum_ij n_ij^2 / b_j     (mean fraction of an item's cluster
        R  = (1/n) sum_ij n_ij^2 / a_i      resp. class that shares its class
        F1 = 2 P R / (P + R),  0 if P + R = 0   resp. cluster)
    """
    return _b3(*_table(labels, pred))


def _xlogx(x):
    """sum x log x over positive entries (0 log 0 = 0)."""
    x = x[x > 0]
    return float(np.sum(x * np.log(x)))


def _v_measure(cells, rows, cols, a, b, n, beta=1.0):
    cells_term = _xlogx(cells) / n
    h_c = math.log(n) - _xlogx(a) / n             # H(C)
    h_k = math.log(n) - _xlogx(b) / n             # H(K)
    h_c_given_k = _xlogx(b) / n - cells_term       # H(C|K)
    h_k_given_c = _xlogx(a) / n - cells_term       # H(K|C)
    # H(C) = 0 exactly when there is one class; test that, not a rounded float
    h = 1.0 if len(a) == 1 else min(max(1.0 - h_c_given_k / h_c, 0.0), 1.0)
    c = 1.0 if len(b) == 1 else min(max(1.0 - h_k_given_c / h_k, 0.0), 1.0)
    v = 0.0 if h + c == 0 else (1 + beta) * h * c / (beta * h + c)
    return h, c, v


def v_measure(labels, pred, beta=1.0):
    """Homogeneity, completeness, V-measure (Rosenberg & Hirschberg 2007).

        H(C)   = -sum_i (a_i/n) log(a_i/n)          H(K) likewise with b_j
        H(C|K) = -sum_ij (n_ij/n) log(n_ij/b_j)     H(K|C) likewise with a_i
        h = 1 - H(C|K)/H(C)  (h = 1 if H(C) = 0)
        c = 1 - H(K|C)/H(K)  (c = 1 if H(K) = 0)
        v = (1 + beta) h c / (beta h + c),  0 if h + c = 0
    Natural logarithms; h and c are clipped to [0, 1] against rounding.
    """
    return _v_measure(*_table(labels, pred), beta=beta)


def _pairs(x):
    return float(np.sum(x * (x - 1))) / 2          # sum C(x, 2); exact while n < 9e7


def _ari(cells, rows, cols, a, b, n):
    index, sum_a, sum_b = _pairs(cells), _pairs(a), _pairs(b)
    total = n * (n - 1) / 2
    expected = sum_a * sum_b / total if total > 0 else 0.0
    max_index = (sum_a + sum_b) / 2
    if max_index == expected:                      # n = 1, or both trivial partitions
        return 1.0
    return (index - expected) / (max_index - expected)


def ari(labels, pred):
    """Adjusted Rand index (Hubert & Arabie 1985) from pair counts.

        index    = sum_ij C(n_ij, 2)
        expected = sum_i C(a_i, 2) * sum_j C(b_j, 2) / C(n, 2)
        max      = (sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2
        ARI      = (index - expected) / (max - expected),  1 if max = expected
    """
    return _ari(*_table(labels, pred))


def score(labels, pred):
    """All metrics from a single contingency table, plus n and the table size."""
    table = _table(labels, pred)
    p, r, f1 = _b3(*table)
    h, c, v = _v_measure(*table)
    return {"b3_precision": p, "b3_recall": r, "b3_f1": f1,
            "v_homogeneity": h, "v_completeness": c, "v_measure": v,
            "ari": _ari(*table), "n": int(table[5]),
            "n_classes": len(table[3]), "n_clusters": len(table[4])}
