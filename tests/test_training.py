"""Tests for training.py on the tiny BERT of test_model.py: batches and representations, saving and
loading, checkpoints, the optimiser's schedule, and the loop that both training stages share."""
import copy

import numpy as np
import pytest
import torch

import training as T
from data import DataError
from test_model import one_thread, random_batch, tiny_ure  # noqa: F401 (one_thread: an autouse fixture)
from training import length_batches


# ---- batches and representation ---------------------------------------------------------------

def test_length_batches_inference_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=103)
    batches = length_batches(lengths, 10)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(103))  # every index exactly once
    assert np.all(np.diff(lengths[order]) >= 0)         # in length order


def test_length_batches_training_permutation():
    lengths = np.arange(50)  # already sorted: a random order cannot be mistaken for length order
    a = length_batches(lengths, 8, np.random.default_rng(7))
    b = length_batches(lengths, 8, np.random.default_rng(7))
    c = length_batches(lengths, 8, np.random.default_rng(8))
    assert [len(x) for x in a] == [8] * 6 + [2]
    order = np.concatenate(a)
    assert sorted(order.tolist()) == list(range(50))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not np.array_equal(order, np.concatenate(c))
    assert not np.all(np.diff(lengths[order]) >= 0)


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
    out_idx, (ids, mask, head, tail, head_end, tail_end) = T.to_batch(arrays, idx)
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
    feats, probs = T.represent(m.encoder, arrays, length_batches(arrays["lengths"], 4), head=m.cluster_head)
    assert m.encoder.training  # mode restored
    single, _ = T.represent(m.encoder, arrays, [np.array([i]) for i in range(11)])
    assert feats.shape == (11, 64) and feats.dtype == np.float32
    assert np.allclose(feats, single, atol=1e-5)  # padding and batch composition change nothing
    assert probs.shape == (11, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = m.cluster_head(torch.from_numpy(feats)).softmax(-1).numpy()
    assert np.allclose(probs, expected, atol=1e-5)
    m.encoder.eval()
    T.represent(m.encoder, arrays, [np.arange(11)])
    assert not m.encoder.training


# ---- saving and loading ----------------------------------------------------------------------

def test_save_and_load_model(tmp_path):
    m = tiny_ure(k=3)
    with torch.no_grad():
        m.cluster_head.weight.mul_(2.0)
    config = {"bert": T.bert_config(m.encoder.bert), "proj_dim": 32, "pred_dim": 8, "k": 3, "pooling": "markers"}
    path = str(tmp_path / "model.pt")
    T.save_model(path, m, config)
    torch.load(path, weights_only=True)
    m2, c = T.load_model(path)
    assert c == config
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    m.eval(), m2.eval()
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(m.encoder(*batch), m2.encoder(*batch))
    with pytest.raises(DataError, match="not found"):
        T.load_model(str(tmp_path / "absent.pt"))


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
    opt, sched = T.make_optimizer(m, 1e-3, 1e-2, steps=100)
    for _ in range(3):
        _train_step(m, opt, sched, batch)
    path = str(tmp_path / "checkpoint.pt")
    T.save_checkpoint(path, m, opt, sched, 4, run_id="abc", history=[{"epoch": 1, "loss": 0.5}])
    saved_params = {k: v.clone() for k, v in m.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())  # state_dict() shares the live tensors
    saved_lr = sched.get_last_lr()

    after_save = torch.rand(5)
    loss_a = _train_step(m, opt, sched, batch)
    params_a = {k: v.clone() for k, v in m.state_dict().items()}

    torch.load(path, weights_only=True)  # a plain, weights-only loadable file
    m2 = tiny_ure(seed=9)
    m2.train()
    opt2, sched2 = T.make_optimizer(m2, 1e-3, 1e-2, steps=100)
    assert not torch.equal(m2.projector[0].weight, saved_params["projector.0.weight"])
    state = T.load_checkpoint(path, m2, opt2, sched2, "abc")
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
    opt, sched = T.make_optimizer(m, 1e-3, 1e-2, steps=10)  # warm-up: 1 step
    for _ in range(4):
        _train_step(m, opt, sched, batch)
    path = str(tmp_path / "checkpoint.pt")
    T.save_checkpoint(path, m, opt, sched, 1, run_id="r")
    m2 = tiny_ure(seed=9)
    opt2, sched2 = T.make_optimizer(m2, 1e-3, 1e-2, steps=10)
    T.load_checkpoint(path, m2, opt2, sched2, "r")
    with pytest.raises(DataError, match="other data or other settings"):
        T.load_checkpoint(path, m2, opt2, sched2, "another run")
    assert sched2.last_epoch == 4 and sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert torch.equal(m2.projector[0].weight, m.projector[0].weight)


def test_load_checkpoint_unreadable(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    m = tiny_ure()
    opt, sched = T.make_optimizer(m, 1e-3, 1e-2, steps=10)
    with pytest.raises(DataError, match="not a readable checkpoint"):
        T.load_checkpoint(str(bad), m, opt, sched, "r")


def test_make_optimizer_groups_and_schedule():
    m = tiny_ure(k=4)
    steps, lr, head_lr = 100, 1e-3, 1e-2
    opt, sched = T.make_optimizer(m, lr, head_lr, steps, warmup=0.1)
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


# ---- relation-context positives -------------------------------------------------------------------

def test_partners_are_other_members_of_the_group():
    groups = np.array([0, -1, 0, 1, 1, 0, -1, 1, 2, 2])
    b = np.arange(10)
    seen = {i: set() for i in b}
    for seed in range(50):
        p = T.partners(groups, b, np.random.default_rng(seed))
        for i, j in zip(b, p):
            if groups[i] < 0:
                assert j == i                     # no group: the instance itself (a dropout view)
            else:
                assert j != i and groups[j] == groups[i]
            seen[i].add(int(j))
    assert seen[0] == {2, 5} and seen[3] == {4, 7} and seen[8] == {9}  # every other member gets drawn
    same = [T.partners(groups, b, np.random.default_rng(3)) for _ in range(2)]
    assert np.array_equal(*same)  # reproducible from the rng


def test_positive_views_key_encodes_the_partner():
    """With partners, r2 of row i is r of sentence pb[i]: in eval mode (no dropout) it equals r1 of that
    sentence, and a row partnered with itself gets r2 == r1."""
    arrays = encoded_arrays(n=6)
    encoder = tiny_ure().encoder.eval()
    b, pb = np.arange(6), np.array([3, 1, 2, 0, 5, 4])
    with torch.no_grad():
        r1, r2 = T.positive_views(encoder, arrays, b, pb)
    assert r1.shape == r2.shape == (6, encoder.dim)
    assert torch.allclose(r2, r1[pb], atol=1e-5)


def test_context_groups_missing_file_is_a_clear_error():
    args = type("A", (), {"positives": "key", "data": "runs/x"})()
    with pytest.raises(DataError, match="context_key.npy"):
        T.context_groups({}, args)
    args.positives = "dropout"
    assert T.context_groups({}, args) is None


# ---- entity substitution (--positives entity) -----------------------------------------------------

H, EH, TT, ET = 90, 91, 92, 93  # marker ids of <h:A>, </h:A>, <t:B>, </t:B> in the arrays below


def marked_arrays():
    """Four sentences: [CLS] ... <h> head words </h> ... <t> tail words </t> ... [SEP], the tail first in
    the second one, and a head of another type (marker 94) in the last one."""
    rows = [[1, H, 10, 11, EH, 5, TT, 20, ET, 6, 2],
            [1, TT, 21, ET, 7, H, 12, 13, 14, EH, 2],
            [1, H, 15, EH, TT, 22, 23, ET, 2],
            [1, 94, 16, 95, 8, TT, 24, ET, 2]]
    ids = np.zeros((4, 14), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    pos = lambda m: np.array([r.index(m) if m in r else r.index(m + 4) for r in rows], np.int32)  # noqa: E731
    return {"input_ids": ids, "lengths": np.array([len(r) for r in rows], np.int32), "head_pos": pos(H),
            "head_end": pos(EH), "tail_pos": pos(TT), "tail_end": pos(ET)}


def test_substituted_puts_the_donors_mentions_between_the_markers():
    arrays = marked_arrays()
    out = T.substituted(arrays, np.array([0, 1, 2]), np.array([[1, 2], [2, 0], [0, 1]]))
    rows = [out["input_ids"][j, :out["lengths"][j]].tolist() for j in range(3)]
    assert rows[0] == [1, H, 12, 13, 14, EH, 5, TT, 22, 23, ET, 6, 2]
    assert rows[1] == [1, TT, 20, ET, 7, H, 15, EH, 2]                  # tail first: still right
    assert rows[2] == [1, H, 10, 11, EH, TT, 21, ET, 2]
    for j, r in enumerate(rows):  # the positions point at the markers of the new sentence
        assert (r[out["head_pos"][j]], r[out["head_end"][j]]) == (H, EH)
        assert (r[out["tail_pos"][j]], r[out["tail_end"][j]]) == (TT, ET)
    assert (out["input_ids"][0, 13:] == 0).all() and out["input_ids"].shape == (3, 14)
    # a sentence that would outgrow the encoded width (here 11) keeps its own mentions
    arrays["input_ids"] = arrays["input_ids"][:, :11]
    out = T.substituted(arrays, np.array([0, 2]), np.array([[1, 2], [0, 0]]))
    assert out["input_ids"][0].tolist() == arrays["input_ids"][0].tolist() and out["lengths"][0] == 11
    assert out["input_ids"][1, :out["lengths"][1]].tolist() == [1, H, 10, 11, EH, TT, 20, ET, 2]
    assert (out["head_pos"][0], out["head_end"][0], out["tail_pos"][0], out["tail_end"][0]) == (1, 4, 6, 8)


def test_donors_share_the_entity_marker():
    arrays = marked_arrays()
    b = np.arange(4)
    for seed in range(20):
        d = T.donors(arrays, b, np.random.default_rng(seed))
        assert d.shape == (4, 2)
        heads = arrays["input_ids"][np.arange(4), arrays["head_pos"]]
        tails = arrays["input_ids"][np.arange(4), arrays["tail_pos"]]
        assert (heads[d[:, 0]] == heads).all() and (tails[d[:, 1]] == tails).all()
        assert d[3, 0] == 3  # the only head of its type: its own


def test_positive_views_entity_encodes_the_substituted_sentence():
    """With donors, r2 of row i is r of sentence i with the donors' mentions: with itself as the donor of
    both mentions, in eval mode, r2 == r1; with others, it differs."""
    arrays = encoded_arrays(n=6)
    encoder = tiny_ure().encoder.eval()
    b = np.arange(6)
    with torch.no_grad():
        r1, r2 = T.positive_views(encoder, arrays, b, np.stack([b, b], 1))
        assert torch.allclose(r1, r2, atol=1e-5)
        _, r3 = T.positive_views(encoder, arrays, b, np.stack([np.roll(b, 1), np.roll(b, 2)], 1))
    assert not torch.allclose(r1, r3, atol=1e-3)


# ---- the head refitted to the final features (train_cluster.refit_head) ----------------------------

def test_refit_head_recovers_blobs_from_stale_prototypes():
    """Prototypes left where features used to be (random directions) are restarted at the k-means
    centroids of the features and trained with the SCAN loss alone: the head then finds the blobs, the
    SCAN loss on its neighbours is lower than before, and the same seed gives the same head."""
    import types
    import model as M
    import train_cluster
    from metrics import score
    from mine_neighbors import mine
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 24))
    labels = np.repeat(np.arange(4), 50)
    feats = (centres[labels] + 0.3 * rng.normal(size=(200, 24))).astype(np.float32)
    args = types.SimpleNamespace(seed=0, head_lr=1e-3, refit_epochs=3, batch_size=32, entropy_weight=2.0, epochs=1)
    x = torch.from_numpy(feats)
    nb = torch.from_numpy(mine(feats, 5)[0][:, 0].astype(np.int64))
    heads = []
    for _ in range(2):
        torch.manual_seed(1)
        head = M.ClusterHead(24, 4)
        with torch.no_grad():
            before = M.scan_loss(head(x), head(x[nb]), 2.0)[0].item()
        sizes = train_cluster.refit_head(head, feats, mine(feats, 5)[0], args)
        with torch.no_grad():
            after = M.scan_loss(head(x), head(x[nb]), 2.0)[0].item()
            pred = head(x).argmax(1).numpy()
        assert sorted(sizes.tolist()) == [50] * 4
        assert score(labels, pred)["ari"] == 1.0 and after < before
        heads.append(head.weight.detach().clone())
    assert torch.equal(*heads)
