"""Tests for model.py on a tiny BERT built from a config (no download): the encoder's r, the Siamese
loss and its stop-gradient, the SCAN loss, k-means, the cluster head, the collapse measure, train_top."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

import model as M
from data import DataError
from metrics import score



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and it does not spin against other processes on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_bert(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(cfg)


def tiny_ure(seed=0, k=None, pooling="markers"):
    return M.URE(tiny_bert(seed), proj_dim=32, pred_dim=8, k=k, pooling=pooling)


def random_batch(b=8, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (b, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (b,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0 beyond the length
    head = torch.randint(1, length // 4, (b,), generator=g)
    tail = head + 3
    return ids, mask, head, tail, head + 2, tail + 2  # each entity: one subword between its markers


def blobs(n_per=40, k=3, d=5, spread=0.1, seed=0, scale=10.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres = scale * centres / np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + spread * rng.normal(size=(len(labels), d))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


# ---- encoder and Siamese loss ---------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["markers", "spans", "both", "sumdiff"])
def test_relation_encoder_pools_each_part_and_normalises_it(pooling):
    """r against a brute-force loop: the start markers' states, the means of the subwords strictly
    between each entity's two markers, or both; with sumdiff, each head-tail pair of unit-length states
    as their sum and their difference; every 32-wide part L2-normalised."""
    m = tiny_ure(pooling=pooling)
    m.eval()
    ids, mask, head, tail, _, _ = random_batch()
    head_end, tail_end = head + 3, tail + torch.tensor([2, 3, 4, 5, 6, 7, 2, 3])  # spans of 2 and of 1..6 subwords
    mask[:] = 1
    r = m.encoder(ids, mask, head, tail, head_end, tail_end)
    h = m.encoder.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    width = {"markers": 64, "spans": 64, "both": 128, "sumdiff": 128}[pooling]
    assert r.shape == (8, width) and m.encoder.dim == width
    for i in range(8):
        parts = []
        if pooling != "spans":
            parts += [h[i, head[i]], h[i, tail[i]]]
        if pooling != "markers":
            parts += [h[i, head[i] + 1:head_end[i]].mean(0), h[i, tail[i] + 1:tail_end[i]].mean(0)]
        if pooling == "sumdiff":
            a, b, c, d = (p / p.norm() for p in parts)
            parts = [a + b, a - b, c + d, c - d]
        expected = torch.cat([p / p.norm() for p in parts])
        assert torch.allclose(r[i], expected, atol=1e-6)
    with pytest.raises(M.DataError, match="pooling 'cls'"):
        M.RelationEncoder(m.encoder.bert, "cls")


@pytest.mark.parametrize("pooling", ["both", "sumdiff"])
def test_relation_encoder_mirror_cosine(pooling):
    """The same sentence with head and tail swapped (markers and spans): under sumdiff the two r are
    orthogonal, whatever the sentence, so a relation and its inverse ("located in", "contains") are
    never near neighbours for sharing a sentence; under both their cosine is the mean of h_head . h_tail
    and s_head . s_tail."""
    m = tiny_ure(pooling=pooling)
    m.eval()
    ids, mask, head, tail, head_end, tail_end = random_batch()
    mask[:] = 1
    r = m.encoder(ids, mask, head, tail, head_end, tail_end)
    mirror = m.encoder(ids, mask, tail, head, tail_end, head_end)
    cos = F.cosine_similarity(r, mirror)
    if pooling == "sumdiff":
        assert torch.allclose(cos, torch.zeros(8), atol=1e-6)
    else:
        q = r.unflatten(1, (4, 32))
        assert torch.allclose(cos, ((q[:, 0] * q[:, 1]).sum(1) + (q[:, 2] * q[:, 3]).sum(1)) / 2, atol=1e-6)
        assert (cos.abs() > 1e-3).all()


def test_relation_encoder_empty_span_gives_zeros_not_nan():
    """An entity whose words have no subwords (a tokenizer can drop a character) leaves its span
    empty: that part of r is zero, and r stays finite, so no NaN reaches a loss."""
    m = tiny_ure(pooling="both")
    ids, mask, head, tail, _, tail_end = random_batch()
    r = m.encoder(ids, mask, head, tail, head + 1, tail_end)  # the closing marker right after the opening
    assert torch.isfinite(r).all()
    assert (r[:, 64:96] == 0).all() and (r[:, 96:].norm(dim=1) > 0.99).all()
    m = tiny_ure(pooling="sumdiff")  # the span sum and difference are then + and - the tail's span mean
    r = m.encoder(ids, mask, head, tail, head + 1, tail_end)
    r.sum().backward()
    assert torch.isfinite(r).all() and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert torch.allclose(r[:, 64:96], -r[:, 96:], atol=1e-6) and (r[:, 64:].norm(dim=1) > 1.4).all()


def test_dropout_makes_two_views_in_training_only():
    m = tiny_ure()
    batch = random_batch()
    m.train()
    a, b = m.encoder(*batch), m.encoder(*batch)
    assert not torch.equal(a, b)
    assert (a - b).abs().max() > 1e-3
    m.eval()
    with torch.no_grad():
        a, b = m.encoder(*batch), m.encoder(*batch)
    assert torch.equal(a, b)


def gradient_reaches_the_targets(m, r1, r2):
    """Whether URE.siamese sends gradient into z through the targets of the cosines: with the
    stop-gradient, dL/dz of each view is exactly what flows back through its own prediction p."""
    seen = {"z": [], "p": []}
    hooks = [m.projector.register_forward_hook(lambda mod, i, out: seen["z"].append(out)),
             m.predictor.register_forward_hook(lambda mod, i, out: seen["p"].append(out))]
    try:
        loss, _ = m.siamese(r1, r2)
    finally:
        for h in hooks:
            h.remove()
    (z1, z2), (p1, p2) = seen["z"], seen["p"]
    gz1, gz2, gp1, gp2 = torch.autograd.grad(loss, [z1, z2, p1, p2], retain_graph=True)
    through_p = torch.autograd.grad([p1, p2], [z1, z2], grad_outputs=[gp1, gp2], retain_graph=True)
    return not all(torch.allclose(a, b, atol=1e-7) for a, b in zip((gz1, gz2), through_p)), loss


def test_siamese_loss_goes_down_with_no_gradient_into_its_targets(monkeypatch):
    m = tiny_ure()
    batch = random_batch(b=8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.train()
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        r1, r2 = m.encoder(*batch), m.encoder(*batch)
        leaks, loss = gradient_reaches_the_targets(m, r1, r2)
        assert not leaks
        assert loss.dim() == 0 and -1.0 - 1e-5 <= loss.item() <= 1.0 + 1e-5
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    # the check can fail: with the stop-gradient taken away, gradient reaches the targets
    monkeypatch.setattr(torch.Tensor, "detach", lambda self: self)
    assert gradient_reaches_the_targets(m, m.encoder(*batch), m.encoder(*batch))[0]


def _hand_loss(m, r1, r2, stop):
    sg = (lambda z: z.detach()) if stop else (lambda z: z)
    z1, z2 = m.projector(r1), m.projector(r2)
    p1, p2 = m.predictor(z1), m.predictor(z2)
    return -(F.cosine_similarity(p1, sg(z2), dim=-1).mean() + F.cosine_similarity(p2, sg(z1), dim=-1).mean()) / 2


def test_siamese_stop_gradient():
    m = tiny_ure()
    m.train()
    torch.manual_seed(3)
    r1 = torch.randn(8, 64, requires_grad=True)
    r2 = torch.randn(8, 64, requires_grad=True)
    heads = list(m.projector.parameters()) + list(m.predictor.parameters())

    loss, z = m.siamese(r1, r2)
    g_mod = torch.autograd.grad(loss, [r1, r2] + heads)
    sg = _hand_loss(m, r1, r2, stop=True)
    g_sg = torch.autograd.grad(sg, [r1, r2] + heads)
    nosg = _hand_loss(m, r1, r2, stop=False)
    g_nosg = torch.autograd.grad(nosg, [r1, r2] + heads)

    assert torch.allclose(loss, sg, atol=1e-6) and torch.allclose(loss, nosg, atol=1e-6)  # same value...
    for a, b in zip(g_mod, g_sg):                                                           # ...sg's gradient
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert (g_mod[0] - g_nosg[0]).abs().max() > 1e-4
    assert (g_mod[1] - g_nosg[1]).abs().max() > 1e-4

    # r2 gets gradient only through its prediction p2, never through the target z2 of cos(p1, sg(z2))
    z1, z2 = m.projector(r1), m.projector(r2)
    p2 = m.predictor(z2)
    only_p2 = -F.cosine_similarity(p2, z1.detach(), dim=-1).mean() / 2
    (g_r2,) = torch.autograd.grad(only_p2, [r2])
    assert torch.allclose(g_mod[1], g_r2, atol=1e-6, rtol=1e-5)
    p1 = m.predictor(z1)
    first_term = -F.cosine_similarity(p1, m.projector(r2).detach(), dim=-1).mean() / 2
    g = torch.autograd.grad(first_term, [r1, r2], allow_unused=True)
    assert g[1] is None and g[0].abs().max() > 0

    # the returned projection is view 1's, detached
    assert not z.requires_grad
    assert torch.allclose(z, m.projector(r1).detach(), atol=1e-6)


# ---- SCAN loss ----------------------------------------------------------------------------------

def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_scan_loss_hand_computation():
    a = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [-2.0, 0.5, 0.0]])
    n = np.array([[1.5, 0.2, 0.0], [-1.0, 2.0, 0.3], [0.0, 0.0, 0.0], [0.0, 3.0, -1.0]])
    pa, pn = _softmax(a), _softmax(n)
    consistency = -np.mean(np.log(np.sum(pa * pn, axis=1)))
    mean = pa.mean(0)
    entropy = -np.sum(mean * np.log(mean))
    for w in (0.0, 1.0, 5.0):
        total, c, h = M.scan_loss(torch.tensor(a, dtype=torch.float32), torch.tensor(n, dtype=torch.float32), w)
        assert c.item() == pytest.approx(consistency, rel=1e-5)
        assert h.item() == pytest.approx(entropy, rel=1e-5)
        assert total.item() == pytest.approx(consistency - w * entropy, rel=1e-5, abs=1e-6)


def test_scan_entropy_is_log_k_for_uniform_mean_only():
    k = 4
    confident = torch.eye(k) * 8.0  # each row confident in another cluster: the mean is uniform
    _, _, h = M.scan_loss(confident, confident, 1.0)
    assert h.item() == pytest.approx(math.log(k), rel=1e-5)
    _, _, h0 = M.scan_loss(torch.zeros(5, k), torch.zeros(5, k), 1.0)
    assert h0.item() == pytest.approx(math.log(k), rel=1e-6)
    skewed = torch.tensor([[3.0, 0, 0, 0], [2.0, 1, 0, 0], [4.0, 0, 1, 0]])
    _, _, hs = M.scan_loss(skewed, skewed, 1.0)
    assert hs.item() < math.log(k) - 0.1
    collapsed = torch.tensor([[20.0, 0, 0, 0]] * 6)
    _, _, hc = M.scan_loss(collapsed, collapsed, 1.0)
    assert hc.item() < 1e-3


def test_scan_consistency_rewards_agreeing_neighbours():
    a = torch.tensor([[6.0, 0, 0], [0, 6.0, 0]])
    agree, disagree = a.clone(), a.flip(0)
    _, c_agree, _ = M.scan_loss(a, agree, 1.0)
    _, c_dis, _ = M.scan_loss(a, disagree, 1.0)
    assert c_agree.item() < 0.02 and c_dis.item() > 3.0
    assert torch.isfinite(M.scan_loss(torch.tensor([[100.0, -100.0]]), torch.tensor([[-100.0, 100.0]]), 1.0)[0])


def test_knn_vote_is_the_mean_over_the_instance_and_its_neighbours():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=40).astype(np.float32)
    nb = rng.integers(40, size=(40, 6))
    voted = M.knn_vote(probs, probs[nb])
    for i in range(40):  # brute force, one instance at a time
        expected = (probs[i] + sum(probs[j] for j in nb[i])) / 7
        np.testing.assert_allclose(voted[i], expected, rtol=1e-5)
    assert voted.dtype == np.float32 and np.allclose(voted.sum(1), 1, atol=1e-5)


def test_knn_vote_moves_an_instance_to_its_neighbours_cluster():
    """An instance the head puts in cluster 0 whose neighbours are all confidently in cluster 1 moves to 1;
    one whose neighbours agree with it stays, and a confident instance outvotes a single dissenter."""
    probs = np.array([[0.6, 0.4], [0.05, 0.95], [0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.45, 0.55]], np.float32)
    nb = np.array([[1, 2], [2, 0], [1, 0], [4, 0], [3, 5], [3, 4]])
    pred = M.knn_vote(probs, probs[nb]).argmax(1)
    assert pred.tolist() == [1, 1, 1, 0, 0, 0]
    assert (M.knn_vote(probs, probs[nb[:, :0]]) == probs).all()  # no neighbours: the head's own


# ---- collapse measure --------------------------------------------------------------------------

def test_z_rank_tells_collapsed_from_healthy_projections():
    """Through the real projector: random r spans every direction a batch allows; r of one direction
    (scaled copies) gives z on about two lines (the ReLU folds one line in two); constant z, none.
    The std of z/|z| that SimSiam uses reads about 1 on all of them, after the projector's BatchNorm."""
    m = tiny_ure()
    m.train()
    torch.manual_seed(0)
    healthy = m.projector(torch.randn(64, 64))
    collapsed = m.projector(torch.randn(1, 64) * torch.rand(64, 1).add(0.5))
    assert M.z_rank(healthy) > 0.8
    assert M.z_rank(collapsed) < 3 / 32
    assert M.z_rank(torch.zeros(64, 32)) == 0.0
    assert M.z_rank(torch.randn(1, 32).repeat(64, 1)) == pytest.approx(1 / 32, abs=1e-3)
    simsiam_std = lambda z: (F.normalize(z, dim=-1).std(0).mean() * z.shape[1] ** 0.5).item()  # noqa: E731
    assert simsiam_std(collapsed) > 0.9  # why it is not the measure


# ---- k-means and the cluster head ---------------------------------------------------------------

def test_kmeans_recovers_blobs():
    x, labels = blobs(n_per=40, k=4, d=6)
    assign = M.kmeans(x, 4, seed=0)
    assert assign.dtype == np.int64 and assign.shape == (160,)
    assert score(labels, assign)["ari"] == 1.0
    assert len(set(assign.tolist())) == 4


def test_kmeans_unequal_blob_sizes():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    labels = np.array([0] * 60 + [1] * 8 + [2] * 20)
    x = centres[labels] + 0.3 * rng.normal(size=(len(labels), 2))
    assert score(labels, M.kmeans(x, 3, seed=5))["ari"] == 1.0


def test_kmeans_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)  # no clear clusters: the seed matters
    a, b = M.kmeans(x, 5, seed=3), M.kmeans(x, 5, seed=3)
    assert np.array_equal(a, b)
    assert set(a.tolist()) <= set(range(5))


def _inertia(x, assign):
    return sum(((x[assign == c] - x[assign == c].mean(0)) ** 2).sum() for c in np.unique(assign))


def test_kmeans_is_a_lloyd_fixed_point_and_keeps_the_best_restart():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    assign = M.kmeans(x, 5, seed=2)
    assert len(np.unique(assign)) == 5
    means = np.stack([x[assign == c].mean(0) for c in range(5)])
    nearest = ((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(nearest, assign)  # every point is nearest to the mean of its own cluster
    # the first restart of 10 is the single run with the same seed: the best of 10 is no worse
    assert _inertia(x, assign) <= _inertia(x, M.kmeans(x, 5, seed=2, restarts=1)) + 1e-4


def test_kmeans_k_equals_n_and_errors():
    x = np.arange(12, dtype=np.float32).reshape(6, 2) ** 2
    assert sorted(M.kmeans(x, 6).tolist()) == list(range(6))
    with pytest.raises(DataError) as e:
        M.kmeans(x, 7)
    assert "7" in str(e.value) and "6" in str(e.value)
    with pytest.raises(DataError):
        M.kmeans(x, 0)


def test_cluster_head_init_from_blobs():
    x, labels = blobs(n_per=30, k=3, d=16, spread=0.5, seed=2, scale=5.0)
    torch.manual_seed(0)
    head = M.ClusterHead(16, 3, scale=5.0)
    assign = head.init_from(x, seed=1)
    assert score(labels, assign.numpy())["ari"] == 1.0
    with torch.no_grad():
        out = head(torch.from_numpy(x))
    assert out.shape == (90, 3)
    assert torch.equal(out.argmax(1), assign)
    assert out.abs().max() <= 5.0 + 1e-5  # scale * cosine
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(3), atol=1e-5)
    # the prototypes are the normalised centroids of the normalised features
    xn = F.normalize(torch.from_numpy(x), dim=1)
    for c in range(3):
        centroid = F.normalize(xn[assign == c].mean(0), dim=0)
        assert torch.allclose(head.weight[c], centroid, atol=1e-5)


def test_cluster_head_is_scaled_cosine():
    torch.manual_seed(0)
    head = M.ClusterHead(10, 4, scale=3.0)
    r = torch.randn(6, 10)
    expected = 3.0 * torch.stack([torch.stack([F.cosine_similarity(r[i], head.weight[j], dim=0)
                                               for j in range(4)]) for i in range(6)])
    assert torch.allclose(head(r), expected, atol=1e-5)
    assert torch.allclose(head(7.0 * r), head(r), atol=1e-5)  # scale invariant


# ---- optimiser and schedule ---------------------------------------------------------------------

def test_train_top_trains_only_the_top_layers():
    m = tiny_ure()
    M.train_top(m.encoder, 1)  # the tiny encoder has 2 layers: only layer 1 (and the heads) learn
    before = copy.deepcopy(m.state_dict())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m.train()
    r1, r2 = m.encoder(*random_batch()), m.encoder(*random_batch())
    m.siamese(r1, r2)[0].backward()
    opt.step()
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert not any(k.startswith(("encoder.bert.embeddings.", "encoder.bert.encoder.layer.0.")) for k in changed)
    assert any(k.startswith("encoder.bert.encoder.layer.1.") for k in changed)
    assert any(k.startswith("projector.") for k in changed)
    M.train_top(tiny_ure().encoder, 0)  # 0: everything, and no error
    with pytest.raises(M.DataError, match="--train-layers 3: the encoder has 2 layers"):
        M.train_top(tiny_ure().encoder, 3)


