"""estimate_k.py (K without labels), train_cluster.py --k auto, and evaluate.py's "type pairs held to K"
row and --k-scan table."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import estimate_k
from evaluate import seed_mean_b3, type_pairs_held_to
from metrics import score
from test_pipeline import REPO, run  # the stages run as in the pipeline tests


def blobs(k, n, dim=64, spread=0.08, seed=0):
    """n points around k random directions of the unit sphere in `dim` dimensions."""
    rng = np.random.default_rng(seed)
    centres = estimate_k.normalise(rng.normal(size=(k, dim)))
    labels = rng.integers(k, size=n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


def write_features(d, x):
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "features.npy", np.asarray(x, np.float32))
    return d


# ---- the estimate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k, k_min, bandwidth", [(3, 2, 0), (7, 2, 0), (7, 2, estimate_k.BANDWIDTH["silhouette"]),
                                                (20, estimate_k.K_MIN, estimate_k.BANDWIDTH["silhouette"])])
def test_silhouette_recovers_the_number_of_well_separated_clusters(k, k_min, bandwidth):
    """Blobs on the sphere.  (The smoothing can move a sharp peak by one: 3 blobs give 2 with the default
    bandwidth, the price of a smoothing that the real curves need; and k-means with 2 restarts can miss a
    blob's split, so other draws of 7 blobs give 6 or 8: see the README.)"""
    x, _ = blobs(k, (150 if k < 10 else 100) * k, seed=k)
    est, curve = estimate_k.estimate_k(x, k_min, 40, seed=0, criterion="silhouette", bandwidth=bandwidth)
    assert est == k, curve["score"]
    assert curve["k"] == estimate_k.scan_ks(k_min, 40) and len(curve["score"]) == len(curve["smoothed"])
    assert not curve["weak"] and curve["criterion"] == "silhouette" and curve["restarts"] == 2


@pytest.mark.parametrize("k, restarts", [(3, 2), (5, 2), (7, 2), (10, 2), (4, 1)])
def test_stability_recovers_the_number_of_well_separated_clusters(k, restarts):
    """Blobs on the sphere, unsmoothed.  With 2 k-means starts per clustering (the default) stability
    reads these draws of 3, 5, 7 and 10 blobs right (and 4; but 6, 8 and 9 as one more); with one start
    only up to 4 (5 read as 6, 7 as 8, 8 as 12): k-means from one start misplaces centres among many
    equal blobs, so the true K is not the most repeatable.  It reads 20 blobs as 25, where the
    silhouette reads 20 (README, "How many relations?").  These blobs are 64 wide, as many dimensions
    as the scan's principal coordinates, so it clusters them as they are."""
    x, _ = blobs(k, (150 if k < 10 else 100) * k, seed=k)
    est, curve = estimate_k.estimate_k(x, 2, 40, seed=0, criterion="stability", restarts=restarts, bandwidth=0)
    assert est == k, curve["score"]
    assert curve["criterion"] == "stability" and curve["k"] == estimate_k.scan_ks(2, 40)
    assert curve["restarts"] == restarts and not curve["weak"]


@pytest.mark.parametrize("k, bandwidth", [(3, 0), (4, 0), (5, 0), (8, 0), (9, 0), (5, 3), (7, 3), (8, 3), (9, 3),
                                          (10, 3)])
def test_modularity_recovers_the_number_of_well_separated_clusters(k, bandwidth):
    """Blobs on the sphere, unsmoothed and with the default smoothing (std 3).  Modularity reads these
    draws of 3, 4, 5, 8 and 9 blobs right unsmoothed (but 6 and 7 as one more, and 10 as 9: k-means from
    2 starts can merge two blobs and cut a third, which keeps fewer of the graph's edges at the true K);
    smoothed it reads 5, 7, 8, 9 and 10 right (3 and 4 as one fewer: the smoothing moves a sharp peak at
    the range's lower end, the price of a smoothing that the real curves need; 20 as 18)."""
    x, _ = blobs(k, (150 if k < 10 else 100) * k, seed=k)
    est, curve = estimate_k.estimate_k(x, 2, 40, seed=0, bandwidth=bandwidth)
    assert est == k, curve["score"]
    assert curve["criterion"] == "modularity" and curve["k"] == estimate_k.scan_ks(2, 40)
    assert curve["bandwidth"] == bandwidth and curve["dims"] == 64 and curve["pairs"] is None and not curve["weak"]


def modularity_brute_force(a, assign):
    """Newman's Q written out over every pair of nodes: (1 / 2E) sum_ij [A_ij - d_i d_j / 2E] [c_i = c_j]."""
    d = a.sum(1)
    two_e = d.sum()
    return sum(a[i, j] - d[i] * d[j] / two_e for i in range(len(a)) for j in range(len(a))
               if assign[i] == assign[j]) / two_e


def test_modularity_matches_its_definition():
    rng = np.random.default_rng(0)
    for trial in range(5):
        m = int(rng.integers(5, 30))
        a = np.triu((rng.random((m, m)) < 0.3).astype(np.float32), 1)
        a = a + a.T
        a[0, 1] = a[1, 0] = 1  # at least one edge
        assign = rng.integers(int(rng.integers(1, 6)), size=m)
        assert estimate_k.modularity(torch.from_numpy(a), assign) == pytest.approx(modularity_brute_force(a, assign),
                                                                                  abs=1e-6)
    a = torch.from_numpy(np.kron(np.eye(3), np.ones((4, 4))) - np.eye(12)).float()  # 3 cliques of 4, no link between
    assert estimate_k.modularity(a, np.repeat([0, 1, 2], 4)) == pytest.approx(1 - 3 / 9)
    assert estimate_k.modularity(a, np.zeros(12, int)) == pytest.approx(0.0)  # one cluster: Q = 0
    assert estimate_k.modularity(a, np.repeat([0, 1, 2], 4)) > estimate_k.modularity(a, np.arange(12) % 6)


def test_knn_graph_links_each_instance_to_its_nearest():
    """Symmetric, no self-loops, and i - j linked exactly where j is among the n most cosine-similar of
    i or i among those of j (brute force); at most m - 1 neighbours where m is small."""
    x = estimate_k.normalise(np.random.default_rng(1).normal(size=(40, 8)))
    sim = torch.from_numpy(x @ x.T)
    a = estimate_k.knn_graph(sim, 5).numpy()
    nearest = [set(np.argsort(-np.where(np.eye(40, dtype=bool)[i], -np.inf, x @ x[i]))[:5].tolist()) for i in range(40)]
    brute = np.array([[float(j in nearest[i] or i in nearest[j]) for j in range(40)] for i in range(40)])
    assert (a == brute).all() and (a == a.T).all() and not a.diagonal().any() and (a.sum(1) >= 5).all()
    assert (estimate_k.knn_graph(sim[:4, :4], 10).numpy() == 1 - np.eye(4)).all()


def test_stability_is_one_where_k_means_finds_the_same_partition():
    """Three tight, far-apart blobs: every subsample pair agrees at K = 3 (ARI 1); at K = 9 each blob is
    cut at random, and the cuts differ between subsamples."""
    x, _ = blobs(3, 600, spread=0.01, seed=1)
    at3, at9 = estimate_k.stability(estimate_k.normalise(x), [3, 9], pairs=2, seed=0)
    assert at3 == pytest.approx(1.0) and at9 < 0.9


def test_principal_coordinates_keep_the_distances_of_data_within_their_rank():
    """Rows of rank 10 in 200 dimensions: on their top 16 principal coordinates every pairwise distance
    is kept; 0 dimensions, or as many as the data has, leave the rows as they are."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 10)) @ rng.normal(size=(10, 200))).astype(np.float32)
    p = estimate_k.principal(x, 16)
    assert p.shape == (300, 16) and p.dtype == np.float32
    dist = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    assert np.allclose(dist(p), dist(x), rtol=1e-3, atol=1e-3)
    assert estimate_k.principal(x, 0) is x and estimate_k.principal(x, 200) is x


@pytest.mark.parametrize("k", [5, 10])
def test_stability_on_principal_coordinates_recovers_well_separated_clusters(k):
    """Blobs in 384 dimensions (MiniLM's width): the default scan clusters their top 64 principal
    coordinates, and reads 5 and 10 blobs right (these draws of 7 as 8, as the full dimensions read 6,
    8 and 9 of the 64-dimensional blobs above)."""
    x, _ = blobs(k, (150 if k < 10 else 100) * k, dim=384, seed=k)
    est, curve = estimate_k.estimate_k(x, 2, 40, seed=0, criterion="stability", bandwidth=0)
    assert est == k and curve["dims"] == estimate_k.DIMS == 64, curve["score"]


def test_subsample_where_n_is_large():
    x, _ = blobs(7, 3000, spread=0.05, seed=3)
    est, curve = estimate_k.estimate_k(x, 2, 20, seed=0, sample=800, criterion="silhouette")
    assert est == 7 and curve["n"] == 3000 and curve["sample"] == 800
    for criterion in ("modularity", "stability"):  # stability: 80 % of the 800 in each clustering
        _, curve = estimate_k.estimate_k(x, 2, 20, seed=0, sample=800, criterion=criterion)
        assert curve["n"] == 3000 and curve["sample"] == 800


def test_reads_no_labels_and_is_repeatable():
    """The function sees only the features; the same seed gives the same answer."""
    x, _ = blobs(5, 600, seed=2)
    a, b = estimate_k.estimate_k(x, 2, 15, seed=3), estimate_k.estimate_k(x.copy(), 2, 15, seed=3)
    assert a == b


def test_silhouette_matches_the_definition():
    """Cosine-distance silhouette, checked against a direct O(N^2) loop (singletons score 0)."""
    rng = np.random.default_rng(0)
    x = estimate_k.normalise(rng.normal(size=(40, 5)))
    assign = rng.integers(4, size=40)
    assign[0] = 4  # a singleton
    d = 1 - x @ x.T
    s = []
    for i in range(40):
        own = assign == assign[i]
        if own.sum() == 1:
            s.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, assign == c].mean() for c in set(assign.tolist()) if c != assign[i])
        s.append((b - a) / max(a, b))
    xt = torch.from_numpy(x)
    assert estimate_k.silhouette(xt @ xt.T, assign, 5) == pytest.approx(np.mean(s), abs=1e-5)


def test_scan_ks():
    assert estimate_k.scan_ks(10, 100)[:21] == list(range(10, 31))
    assert estimate_k.scan_ks(10, 100)[21:] == list(range(32, 61, 2)) + list(range(65, 101, 5))
    assert estimate_k.scan_ks(2, 7) == list(range(2, 8)) and estimate_k.scan_ks(10, 100, every=True) == list(range(10, 101))
    assert estimate_k.scan_ks(33, 40) == [33, 34, 36, 38, 40]


def test_smooth():
    ks = list(range(2, 12))
    v = np.arange(10, dtype=float)
    assert np.allclose(estimate_k.smooth(ks, v, 0), v)
    assert np.allclose(estimate_k.smooth(ks, np.ones(10), 3), 1)


def test_one_cluster_is_flagged_weak_not_a_crash():
    rng = np.random.default_rng(0)
    centre = estimate_k.normalise(rng.normal(size=(1, 64)))
    x = centre + 0.1 * rng.normal(size=(500, 64))
    for criterion in estimate_k.CRITERIA:
        est, curve = estimate_k.estimate_k(x, 2, 30, seed=0, criterion=criterion)
        assert 2 <= est <= 30 and curve["weak"] and curve["silhouette_at_k"] < estimate_k.WEAK  # K = 1 cannot be scored


def test_range_is_clipped_to_n():
    x, _ = blobs(3, 20, seed=4)
    notes = []
    est, curve = estimate_k.estimate_k(x, k_max=100, seed=0, log=notes.append, criterion="stability")
    assert curve["k"] == list(range(10, 16)) and 10 <= est <= 15  # stability: subsamples of 16
    assert "only 20 instances" in curve["note"] and "16 instances each clustering sees" in curve["note"]
    assert notes == [curve["note"]]
    for criterion in ("silhouette", "modularity"):  # each clustering sees all 20
        est, curve = estimate_k.estimate_k(x, k_max=100, seed=0, criterion=criterion)
        assert curve["k"] == list(range(10, 20)) and 10 <= est <= 19 and "(N - 1)" in curve["note"]
    _, curve = estimate_k.estimate_k(x, 1, 5, seed=0)
    assert curve["k"][0] == 2 and "cannot be scored" in curve["note"]


def test_type_floor_counts_the_type_pairs_above_the_share():
    rng = np.random.default_rng(0)
    tp = rng.choice(30, size=2000, p=rng.dirichlet(np.ones(30) * 0.3))
    brute = sum(1 for t in set(tp.tolist()) if (tp == t).sum() / len(tp) >= estimate_k.TYPE_SHARE)
    assert estimate_k.type_floor(tp) == brute and 0 < brute < len(set(tp.tolist()))
    assert estimate_k.type_floor(None) == 0 and estimate_k.type_floor(np.zeros(50, np.int32)) == 1
    assert estimate_k.type_floor(np.array([0] * 199 + [1])) == 2  # 1 of 200 is 0.5 %: counted


def test_type_floor_raises_the_lower_end_of_the_scan():
    x, _ = blobs(4, 600, seed=2)
    tp = np.repeat(np.arange(12), 50)  # 12 type pairs of 50 instances each
    notes = []
    est, curve = estimate_k.estimate_k(x, 2, 30, seed=0, log=notes.append, type_pair=tp)
    assert curve["k"] == estimate_k.scan_ks(12, 30) and 12 <= est <= 30 and curve["type_floor"] == 12
    assert "starts at K = 12" in curve["note"] and notes == [curve["note"]]
    assert estimate_k.estimate_k(x, 2, 30, seed=0, bandwidth=0)[0] == 4  # without the types: the 4 blobs
    _, curve = estimate_k.estimate_k(x, 2, 8, seed=0, type_pair=tp)  # the floor above the range: its top
    assert curve["k"] == [8] and curve["type_floor"] == 12
    _, curve = estimate_k.estimate_k(x, 14, 30, seed=0, type_pair=tp)  # below --k-min: no change, no note
    assert curve["k"][0] == 14 and curve["note"] is None
    with pytest.raises(estimate_k.DataError, match="599 type-pair ids for 600"):
        estimate_k.estimate_k(x, 2, 30, type_pair=tp[1:])


@pytest.mark.parametrize("n, k_min, k_max, criterion, msg", [
    (2, 2, 100, "modularity", "at least 3"), (1, 2, 100, "modularity", "at least 3"),
    (3, 2, 100, "stability", "at least 3"),  # stability: subsamples of 2
    (10, 12, 20, "modularity", "leaves nothing to scan"),
    (8, estimate_k.K_MIN, 100, "modularity", "leaves nothing to scan")])
def test_too_few_instances_is_a_clear_error(n, k_min, k_max, criterion, msg):
    with pytest.raises(estimate_k.DataError, match=msg):
        estimate_k.estimate_k(np.ones((n, 4), np.float32), k_min, k_max, criterion=criterion)
    with pytest.raises(estimate_k.DataError, match="criterion 'gap'"):
        estimate_k.estimate_k(np.ones((50, 4), np.float32), criterion="gap")


# ---- the stage -------------------------------------------------------------------------------------


def test_stage_writes_k_json_and_plot(tmp_path):
    x, _ = blobs(7, 1050, seed=7)
    d = write_features(tmp_path / "run", x)
    (d / "labels.npy").write_bytes(b"not an array")  # never read: the estimate needs no labels
    p = run("estimate_k.py", d, "--k-min", "2", "--k-max", "12", "--bandwidth", "0", "--criterion", "stability")
    m = json.loads((d / "k.json").read_text())
    assert "estimated K = 7" in p.stdout and m["k"] == 7 and m["criterion"].startswith("stability")
    assert m["restarts"] == 2 and m["bandwidth"] == 0 and len(m["curve"]["score"]) == 11 and m["dims"] == 64
    assert m["pairs"] == 3
    p = run("estimate_k.py", d, "--k-min", "2", "--k-max", "20")  # the default: modularity, smoothed with std 3
    m = json.loads((d / "k.json").read_text())
    assert "estimated K = 7" in p.stdout and m["k"] == 7 and m["criterion"].startswith("modularity")
    assert m["bandwidth"] == 3 and m["dims"] == 64 and m["pairs"] is None and len(m["curve"]["score"]) == 19
    p = run("estimate_k.py", d, "--k-min", "2", "--k-max", "30", "--plot", "--criterion", "silhouette")
    assert "estimated K = 7" in p.stdout and "no labels are read" in p.stdout
    m = json.loads((d / "k.json").read_text())
    c = m["curve"]
    assert m["k"] == 7 and c["k"] == list(range(2, 31)) and m["criterion"].startswith("silhouette")
    assert m["k"] == c["k"][int(np.argmax(c["smoothed"]))]
    assert len(c["score"]) == 29 and m["seconds"] >= 0 and m["n"] == 1050 and m["weak"] is False
    assert m["dims"] is None and m["pairs"] is None  # the projection and the pairs are the stability scan's
    assert (d / "k.png").stat().st_size > 0
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]


def test_stage_reads_the_type_pairs_of_the_runs_data(tmp_path):
    x, _ = blobs(4, 600, seed=2)
    data = write_features(tmp_path / "train", x)  # an encoded directory with types (encode.py's files)
    np.save(data / "type_pair.npy", np.repeat(np.arange(12), 50).astype(np.int32))
    (data / "meta.json").write_text(json.dumps({"stage": "encode", "n_instances": 600, "fingerprint": "f",
                                                "model": "m", "markers": []}))
    siamese = write_features(tmp_path / "siamese", x)  # a training stage's run on it: types from its data
    (siamese / "meta.json").write_text(json.dumps({"stage": "siamese", "data": str(data), "data_fingerprint": "f",
                                                   "n_instances": 600, "fingerprint": "g"}))
    bare = write_features(tmp_path / "bare", x)  # features alone: no types, no floor
    for d in (data, siamese, bare):
        p = run("estimate_k.py", d, "--k-min", "2", "--k-max", "30", "--bandwidth", "0")
        m = json.loads((d / "k.json").read_text())
        if d == bare:
            assert m["type_floor"] == 0 and m["curve"]["k"][0] == 2 and m["k"] == 4
        else:
            assert m["type_floor"] == 12 and m["curve"]["k"][0] == 12 and m["k"] >= 12
            assert "12 hold at least 0.5 %" in p.stdout and "the scan starts at K = 12" in p.stdout
    np.save(data / "type_pair.npy", np.zeros(599, np.int32))
    p = run("estimate_k.py", siamese, ok=False)
    assert p.returncode == 2 and "type_pair.npy: has 599 rows but its data has 600" in p.stderr


def test_stage_on_too_few_instances_and_one_cluster(tmp_path):
    d = write_features(tmp_path / "tiny", np.eye(2, 8))
    p = run("estimate_k.py", d, ok=False)
    assert p.returncode == 2 and "at least 3" in p.stderr and not (d / "k.json").exists()
    rng = np.random.default_rng(0)
    centre = estimate_k.normalise(rng.normal(size=(1, 64)))
    d = write_features(tmp_path / "one", centre + 0.1 * rng.normal(size=(500, 64)))
    p = run("estimate_k.py", d, "--k-min", "2", "--k-max", "20")
    assert "no clear cluster structure" in p.stdout
    assert json.loads((d / "k.json").read_text())["weak"] is True
    p = run("estimate_k.py", tmp_path / "nothing", ok=False)
    assert p.returncode == 2 and "no features.npy" in p.stderr
    p = run("estimate_k.py", d, "--dims", "-1", ok=False)
    assert p.returncode == 2 and "--dims -1" in p.stderr and "0 dimensions" in p.stderr


# ---- evaluate.py: type pairs held to K -----------------------------------------------------------


def held_to_k_brute_force(type_pair, k):
    """The K - 1 largest type pairs kept, the rest merged: written out the slow way."""
    sizes = {t: int((type_pair == t).sum()) for t in set(type_pair.tolist())}
    if len(sizes) <= k:
        return [f"pair {t}" for t in type_pair]
    ranked = sorted(sizes, key=lambda t: (-sizes[t], t))
    kept = set(ranked[:k - 1])
    return [f"pair {t}" if t in kept else "the rest" for t in type_pair]


def same_partition(a, b):
    pairs = set(zip(a, b))
    return len(pairs) == len(set(a)) == len(set(b))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 5, 10, 30])
def test_type_pairs_held_to_k_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    n_pairs = int(rng.integers(1, 25))
    tp = rng.choice(n_pairs, size=300, p=rng.dirichlet(np.ones(n_pairs) * 0.5)).astype(np.int32)
    got = type_pairs_held_to(tp, k)
    assert same_partition(got.tolist(), held_to_k_brute_force(tp, k))
    assert len(np.unique(got)) == min(k, len(np.unique(tp)))


def test_type_pairs_held_to_k_ties_and_sizes():
    tp = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4])
    got = type_pairs_held_to(tp, 3)  # 0 (3) and 1 (2; tie with 2, lower id first) kept
    assert same_partition(got.tolist(), ["a"] * 3 + ["b"] * 2 + ["rest"] * 4)
    assert (type_pairs_held_to(tp, 5) == tp).all() and (type_pairs_held_to(tp, 9) == tp).all()


# ---- the pipeline: train_cluster.py --k auto, evaluate.py --k auto --k-scan -------------------------


@pytest.fixture(scope="module")
def auto(tmp_path_factory, tiny_model, tiny_data):
    out = tmp_path_factory.mktemp("auto")
    train, test = tiny_data
    run("encode.py", train, "--out", out / "train", "--model", tiny_model, "--features")
    run("encode.py", test, "--out", out / "test", "--tokenizer-from", out / "train", "--features")
    run("train_siamese.py", "--data", out / "train", "--out", out / "siamese", "--epochs", "1", "--batch-size", "16")
    run("mine_neighbors.py", out / "siamese", "--k", "5")
    log = run("train_cluster.py", "--data", out / "train", "--init", out / "siamese", "--out", out / "cluster",
              "--k", "auto", "--epochs", "1", "--batch-size", "16")
    run("predict.py", "--model", out / "cluster", "--data", out / "test", "--out", out / "test_cluster")
    return out, log


def test_train_cluster_k_auto(auto):
    out, log = auto
    meta = json.loads((out / "cluster" / "meta.json").read_text())
    k = meta["k"]
    x = np.load(out / "siamese" / "features.npy")
    tp = np.load(out / "train" / "type_pair.npy")  # the training data's type pairs set the scan's floor
    expected, curve = estimate_k.estimate_k(x, seed=0, type_pair=tp)
    assert k == expected == meta["k_estimate"]["k"] == meta["settings"]["k"]
    assert meta["k_estimate"]["type_floor"] == estimate_k.type_floor(tp) > 0
    assert meta["k_estimate"]["curve"]["score"] == curve["score"]
    assert np.load(out / "cluster" / "probs.npy").shape[1] == k
    assert f"--k auto: K = {k}, estimated without labels" in log.stderr + log.stdout
    assert run("train_cluster.py", "--data", out / "train", "--init", out / "siamese", "--out", out / "bad",
               "--k", "many", ok=False).returncode == 2


def test_evaluate_k_auto_and_k_scan(auto):
    out, _ = auto
    k = json.loads((out / "cluster" / "meta.json").read_text())["k"]
    p = run("evaluate.py", out / "test_cluster", out / "test", "--k", "auto", "--k-scan", "--lda-from", out / "train",
            "--out", out / "m.json")
    m = json.loads((out / "m.json").read_text())
    assert m["k"] == k and f"--k auto: K = {k}, the clustering head's" in p.stdout + p.stderr
    names = [r["name"] for r in m["rows"]]
    assert names[:2] == ["one cluster per type pair", "type pairs held to K"]
    tp = np.load(out / "test" / "type_pair.npy")
    labels = np.load(out / "test" / "labels.npy")
    held = score(labels, type_pairs_held_to(tp, k))
    assert m["rows"][1]["b3_f1"] == pytest.approx(held["b3_f1"])
    assert "ORACLE" in p.stdout
    assert [s["name"] for s in m["k_scan"]] == ["k-means, final features", "k-means, frozen encoder"]
    for s in m["k_scan"]:
        by_k = {int(k): v for k, v in s["b3_f1_by_k"].items()}
        assert s["k_gold"] == len(np.unique(labels))
        assert s["oracle_best_b3_f1"] == max(by_k[k] for k in estimate_k.scan_ks(*s["k_range"]))
        assert s["b3_f1_at_estimate"] == by_k[s["k_estimated"]] <= s["oracle_best_b3_f1"]
        assert s["k_curve"]["k"] == estimate_k.scan_ks(10, 39)  # 40 test instances: K < 40
        assert s["k_range"] == [10, 38]  # scan_ks(10, 39) ends at 38 (every second K above 30)
        assert s["scan_seeds"] == 3 and s["criterion"].startswith("modularity")
    # K also estimated on the training part's features of the same kind: the final features of the model
    # behind test_cluster (as train_cluster.py --k auto would), and --lda-from's frozen features
    for s, train in zip(m["k_scan"], (out / "cluster", out / "train")):
        assert s["k_curve"]["type_floor"] == estimate_k.type_floor(tp) > 0  # the test part's type pairs
        k_train, _ = estimate_k.estimate_k(np.load(train / "features.npy"), seed=0,
                                           type_pair=np.load(out / "train" / "type_pair.npy"))
        assert s["k_estimated_on_train"] == k_train
        by_k = {int(k): v for k, v in s["b3_f1_by_k"].items()}
        assert s["b3_f1_at_train_estimate"] == by_k[k_train]
        assert s["b3_f1_at_train_estimate"] == pytest.approx(
            seed_mean_b3(labels, estimate_k.normalise(np.load(Path(s["dir"]) / "features.npy")), k_train, 0))
    p = run("evaluate.py", out / "test", "--k", "10", "--k-scan", "--out", out / "m2.json")
    scan, = json.loads((out / "m2.json").read_text())["k_scan"]
    assert scan["k_estimated_on_train"] is None and scan["b3_f1_at_train_estimate"] is None  # no --lda-from


def test_bench_quality_reports_k_without_labels():
    spec = importlib.util.spec_from_file_location("quality", REPO / "bench" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    from types import SimpleNamespace
    row = {m: 0.5 for m in quality.METRICS}
    scan = {"name": "k-means, frozen encoder", "k_estimated": 12, "k_gold": 91, "b3_f1_at_estimate": 0.4,
            "k_estimated_on_train": 21, "b3_f1_at_train_estimate": 0.425,
            "b3_f1_at_10": 0.39, "b3_f1_at_gold": 0.32, "oracle_best_b3_f1": 0.41, "oracle_best_k": 14, "k_range": [2, 100]}
    results = {"redocred": {"data": "redocred_dev.json", "pooling": "both", "times": {"encode": 1.5},
                            "table": {10: [dict(row, name="type pairs held to K")]}, "k_scan": [scan]}}
    md = quality.markdown(results, SimpleNamespace(seed=0, siamese_epochs=2, cluster_epochs=1, max_length=64,
                                                 precision="fp32"))
    assert "| type pairs held to K |" in md and "ORACLE" in md
    assert "| frozen encoder | 12 | 40.0 | 21 | 42.5 | 39.0 | 91 | 32.0 | 41.0 (14, range 2..100) |" in md
    assert "3 k-means seeds" in md


def test_k_probe_scores_each_rule_against_the_seed_averaged_curve(tmp_path):
    """bench/k_probe.py, the probe that chose the criterion, end to end on blobs with labels."""
    x, labels = blobs(4, 300, dim=16, spread=0.05, seed=5)
    d = write_features(tmp_path / "train", x)
    np.save(d / "labels.npy", labels.astype(np.int32))
    out = tmp_path / "probe.json"
    p = run("bench/k_probe.py", d, "--out", out)
    r = json.loads(out.read_text())[str(d)]
    k, curve = estimate_k.estimate_k(x)  # the default rule, as the stage makes it (no types: no floor)
    assert r["picks"]["modularity, std 3, from type pairs >= 0.5 % (the default)"] == k
    assert r["scans"]["modularity"]["score"] == curve["score"] and r["gold"] == 4
    k, curve = estimate_k.estimate_k(x, criterion="stability")
    assert r["picks"]["stability, std 5, from type pairs >= 0.5 % (the default before)"] == k
    assert r["picks"]["stability, 64 dimensions, std 5, from 10"] == k
    assert r["scans"]["stability"]["score"] == curve["score"]
    assert {int(k) for k in r["oracle"]} >= set(estimate_k.scan_ks(10, 100)) | set(r["picks"].values())
    x_n = estimate_k.normalise(x)
    from metrics import b3
    from model import kmeans
    assert r["oracle"]["10"] == pytest.approx(np.mean([b3(labels, kmeans(x_n, 10, s, restarts=3))[2] for s in range(3)]))
    assert "(the default)" in p.stdout and "gap" in p.stdout
    # typed data (an encoded directory with type_pair.npy): the default rule reads K from the type floor
    typed = write_features(tmp_path / "typed", x)
    np.save(typed / "labels.npy", labels.astype(np.int32))
    tp = np.repeat(np.arange(15), 20).astype(np.int32)
    tp[:1] = 15  # a 16th type pair of 1 instance (0.3 %): counted only by the last rule
    np.save(typed / "type_pair.npy", tp)
    (typed / "meta.json").write_text(json.dumps({"stage": "encode", "n_instances": 300, "fingerprint": "f",
                                                 "model": "m", "markers": []}))
    run("bench/k_probe.py", typed, "--out", out)
    picks = json.loads(out.read_text())[str(typed)]["picks"]
    default = picks["modularity, std 3, from type pairs >= 0.5 % (the default)"]
    assert default == estimate_k.estimate_k(x, type_pair=tp)[0] and default >= 15
    before = picks["stability, std 5, from type pairs >= 0.5 % (the default before)"]
    assert before == estimate_k.estimate_k(x, type_pair=tp, criterion="stability")[0] and before >= 15
    assert estimate_k.type_floor(tp) == estimate_k.type_floor(tp, 0.01) == 15 and estimate_k.type_floor(tp, 0) == 16
    assert picks["stability, std 5, from type pairs >= 1 %"] >= 15
    assert picks["stability, std 5, from every type pair"] >= 16
