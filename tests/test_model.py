"""Tests for model.py on a tiny BERT built from a config (no download): Siamese loss and its
stop-gradient, SCAN loss, k-means, the cluster head, collapse signal, batching, checkpoints, schedule."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

import model as M
from data import DataError, length_batches
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

@pytest.mark.parametrize("pooling", ["markers", "spans", "both"])
def test_relation_encoder_pools_each_part_and_normalises_it(pooling):
    """r against a brute-force loop: the start markers' states, the means of the subwords strictly
    between each entity's two markers, or both; every 32-wide part L2-normalised."""
    m = tiny_ure(pooling=pooling)
    m.eval()
    ids, mask, head, tail, _, _ = random_batch()
    head_end, tail_end = head + 3, tail + torch.tensor([2, 3, 4, 5, 6, 7, 2, 3])  # spans of 2 and of 1..6 subwords
    mask[:] = 1
    r = m.encoder(ids, mask, head, tail, head_end, tail_end)
    h = m.encoder.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    width = {"markers": 64, "spans": 64, "both": 128}[pooling]
    assert r.shape == (8, width) and m.encoder.dim == width
    for i in range(8):
        parts = []
        if pooling != "spans":
            parts += [h[i, head[i]], h[i, tail[i]]]
        if pooling != "markers":
            parts += [h[i, head[i] + 1:head_end[i]].mean(0), h[i, tail[i] + 1:tail_end[i]].mean(0)]
        expected = torch.cat([p / p.norm() for p in parts])
        assert torch.allclose(r[i], expected, atol=1e-6)
    with pytest.raises(M.DataError, match="pooling 'cls'"):
        M.RelationEncoder(m.encoder.bert, "cls")


def test_relation_encoder_empty_span_gives_zeros_not_nan():
    """An entity whose words have no subwords (a tokenizer can drop a character) leaves its span
    empty: that part of r is zero, and r stays finite, so no NaN reaches a loss."""
    m = tiny_ure(pooling="both")
    ids, mask, head, tail, _, tail_end = random_batch()
    r = m.encoder(ids, mask, head, tail, head + 1, tail_end)  # the closing marker right after the opening
    assert torch.isfinite(r).all()
    assert (r[:, 64:96] == 0).all() and (r[:, 96:].norm(dim=1) > 0.99).all()


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


def test_siamese_loss_goes_down():
    m = tiny_ure()
    batch = random_batch(b=8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.train()
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        r1, r2 = m.encoder(*batch), m.encoder(*batch)
        loss, z = m.siamese(r1, r2)
        assert loss.dim() == 0 and -1.0 - 1e-5 <= loss.item() <= 1.0 + 1e-5
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses


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


# ---- collapse signal ----------------------------------------------------------------------------

def test_collapse_std():
    torch.manual_seed(0)
    assert abs(M.collapse_std(torch.randn(512, 64)) - 1.0) < 0.2
    row = torch.randn(1, 64)
    assert M.collapse_std(row.repeat(512, 1)) < 1e-5
    # scaled copies of one direction are collapsed too (the signal is about directions)
    assert M.collapse_std(row * torch.rand(512, 1).add(0.5)) < 1e-4


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


# ---- batching and representation --------------------------------------------------------------

def encoded_arrays(n=10, width=16, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, width + 1, size=n).astype(np.int32)
    ids = np.zeros((n, width), np.int32)
    for i, l in enumerate(lengths):
        ids[i, :l] = rng.integers(5, 50, size=l)
    head = rng.integers(1, 3, size=n).astype(np.int32)
    tail = (head + rng.integers(2, 4, size=n)).astype(np.int32)
    return {"input_ids": ids, "lengths": lengths, "head_pos": head, "tail_pos": tail,
            "head_end": head + 2, "tail_end": tail + 2}


def test_to_batch():
    arrays = encoded_arrays()
    arrays["lengths"][:4] = [3, 7, 5, 2]
    idx = np.array([2, 0, 3])
    out_idx, (ids, mask, head, tail, head_end, tail_end) = M.to_batch(arrays, idx)
    assert out_idx is idx
    assert ids.dtype == torch.int64 and ids.shape == (3, 5)  # cut to the longest of the three
    assert torch.equal(ids, torch.from_numpy(arrays["input_ids"][[2, 0, 3], :5].astype(np.int64)))
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert head.tolist() == arrays["head_pos"][[2, 0, 3]].tolist()
    assert tail.tolist() == arrays["tail_pos"][[2, 0, 3]].tolist()
    assert head_end.tolist() == arrays["head_end"][[2, 0, 3]].tolist()
    assert tail_end.tolist() == arrays["tail_end"][[2, 0, 3]].tolist()


def test_represent_independent_of_batching_and_restores_mode():
    m = tiny_ure(k=3)
    arrays = encoded_arrays(n=11)
    m.encoder.train()
    feats, probs = M.represent(m.encoder, arrays, length_batches(arrays["lengths"], 4), head=m.cluster_head)
    assert m.encoder.training  # mode restored
    single, _ = M.represent(m.encoder, arrays, [np.array([i]) for i in range(11)])
    assert feats.shape == (11, 64) and feats.dtype == np.float32
    assert np.allclose(feats, single, atol=1e-5)  # padding and batch composition change nothing
    assert probs.shape == (11, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = m.cluster_head(torch.from_numpy(feats)).softmax(-1).numpy()
    assert np.allclose(probs, expected, atol=1e-5)
    m.encoder.eval()
    M.represent(m.encoder, arrays, [np.arange(11)])
    assert not m.encoder.training


# ---- saving and loading ----------------------------------------------------------------------

def test_save_and_load_model(tmp_path):
    m = tiny_ure(k=3)
    with torch.no_grad():
        m.cluster_head.weight.mul_(2.0)
    config = {"bert": M.bert_config(m.encoder.bert), "proj_dim": 32, "pred_dim": 8, "k": 3, "pooling": "markers"}
    path = str(tmp_path / "model.pt")
    M.save_model(path, m, config)
    torch.load(path, weights_only=True)
    m2, c = M.load_model(path)
    assert c == config
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    m.eval(), m2.eval()
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(m.encoder(*batch), m2.encoder(*batch))
    with pytest.raises(DataError, match="not found"):
        M.load_model(str(tmp_path / "absent.pt"))


def _train_step(m, opt, sched, batch):
    r1, r2 = m.encoder(*(torch.cat([t, t]) for t in batch)).chunk(2)
    loss, _ = m.siamese(r1, r2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def test_checkpoint_roundtrip_resumes_exactly(tmp_path):
    """Saved during the warm-up (see the next test for a checkpoint saved after it)."""
    batch = random_batch()
    m = tiny_ure(seed=0)
    m.train()
    opt, sched = M.make_optimizer(m, 1e-3, 1e-2, steps=100)
    for _ in range(3):
        _train_step(m, opt, sched, batch)
    path = str(tmp_path / "checkpoint.pt")
    M.save_checkpoint(path, m, opt, sched, 4, run_id="abc", history=[{"epoch": 1, "loss": 0.5}])
    saved_params = {k: v.clone() for k, v in m.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())  # state_dict() shares the live tensors
    saved_lr = sched.get_last_lr()

    after_save = torch.rand(5)
    loss_a = _train_step(m, opt, sched, batch)
    params_a = {k: v.clone() for k, v in m.state_dict().items()}

    torch.load(path, weights_only=True)  # a plain, weights-only loadable file
    m2 = tiny_ure(seed=9)
    m2.train()
    opt2, sched2 = M.make_optimizer(m2, 1e-3, 1e-2, steps=100)
    assert not torch.equal(m2.projector[0].weight, saved_params["projector.0.weight"])
    state = M.load_checkpoint(path, m2, opt2, sched2, "abc")
    assert state["epoch"] == 4 and state["run_id"] == "abc" and state["history"] == [{"epoch": 1, "loss": 0.5}]
    assert torch.equal(torch.rand(5), after_save)  # torch RNG restored
    sd2 = m2.state_dict()
    assert all(torch.equal(sd2[k], saved_params[k]) for k in saved_params)
    o2 = opt2.state_dict()
    assert o2["param_groups"] == saved_opt["param_groups"]
    assert o2["state"].keys() == saved_opt["state"].keys() and len(o2["state"]) > 0
    for i, s in saved_opt["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(o2["state"][i][name], s[name])
    assert sched2.get_last_lr() == saved_lr and sched2.last_epoch == 3

    # the next step from the restored state is the same step (same dropout masks, same update)
    loss_b = _train_step(m2, opt2, sched2, batch)
    assert loss_b == loss_a
    sd2 = m2.state_dict()
    assert all(torch.equal(sd2[k], params_a[k]) for k in params_a)


def test_checkpoint_saved_after_warmup_loads(tmp_path):
    batch = random_batch()
    m = tiny_ure(seed=0)
    m.train()
    opt, sched = M.make_optimizer(m, 1e-3, 1e-2, steps=10)  # warm-up: 1 step
    for _ in range(4):
        _train_step(m, opt, sched, batch)
    path = str(tmp_path / "checkpoint.pt")
    M.save_checkpoint(path, m, opt, sched, 1, run_id="r")
    m2 = tiny_ure(seed=9)
    opt2, sched2 = M.make_optimizer(m2, 1e-3, 1e-2, steps=10)
    M.load_checkpoint(path, m2, opt2, sched2, "r")
    with pytest.raises(DataError, match="other data or other settings"):
        M.load_checkpoint(path, m2, opt2, sched2, "another run")
    assert sched2.last_epoch == 4 and sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert torch.equal(m2.projector[0].weight, m.projector[0].weight)


def test_load_checkpoint_unreadable(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    m = tiny_ure()
    opt, sched = M.make_optimizer(m, 1e-3, 1e-2, steps=10)
    with pytest.raises(DataError, match="not a readable checkpoint"):
        M.load_checkpoint(str(bad), m, opt, sched, "r")


# ---- optimiser and schedule ---------------------------------------------------------------------

def test_train_top_trains_only_the_top_layers():
    m = tiny_ure()
    M.train_top(m.encoder, 1)  # the tiny encoder has 2 layers: only layer 1 (and the heads) learn
    before = copy.deepcopy(m.state_dict())
    opt, _ = M.make_optimizer(m, 1e-2, 1e-2, steps=10)
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


def test_make_optimizer_groups_and_schedule():
    m = tiny_ure(k=4)
    steps, lr, head_lr = 100, 1e-3, 1e-2
    opt, sched = M.make_optimizer(m, lr, head_lr, steps, warmup=0.1)
    enc, heads = opt.param_groups
    enc_ids = {id(p) for p in enc["params"]}
    head_ids = {id(p) for p in heads["params"]}
    assert enc_ids == {id(p) for p in m.encoder.parameters()}
    assert head_ids == {id(p) for n, p in m.named_parameters() if not n.startswith("encoder.")}
    assert id(m.cluster_head.weight) in head_ids and not enc_ids & head_ids

    lrs = []
    for _ in range(steps):
        lrs.append((enc["lr"], heads["lr"]))
        opt.step()
        sched.step()
    enc_lrs = np.array([a for a, _ in lrs])
    assert np.allclose([b / a for a, b in lrs], head_lr / lr)  # one schedule for both groups
    assert np.all(np.diff(enc_lrs[:10]) > 0)                   # warm-up rises
    assert enc_lrs[0] <= lr / 5
    peak = int(enc_lrs.argmax())
    assert 8 <= peak <= 11 and enc_lrs[peak] == pytest.approx(lr, rel=0.02)
    assert np.all(np.diff(enc_lrs[peak:]) <= 1e-12)            # then decays
    assert enc_lrs[-1] < 1e-3 * lr                             # to about zero at the last step
    assert enc_lrs[steps // 2 + 5] == pytest.approx(lr / 2, rel=0.2)
