"""Scale-out: both training stages under torchrun with 2 processes (gloo, CPU) against one process.

The distributed run splits every global batch across the ranks, gathers the representations and runs
the heads and losses on the whole batch (model.py, "Scale-out"), so at the same --batch-size it must
train the same model as one process.  Dropout masks are the one thing the ranks draw differently, so
the runs compared here use --dropout 0.

Tolerance.  The two runs do the same arithmetic on differently shaped tensors: a rank pads its shard to
its own longest sentence, not the global batch's, and the matrix products see fewer rows.  That changes
float32 rounding in the last bits (about 1e-7 relative per operation), which 16 AdamW steps amplify to
about 1e-5 on features of size about 3 (measured: 1.5e-5 after the Siamese stage, 5e-7 after the
clustering stage).  atol 1e-4 leaves a margin over that; a real error (BatchNorm or the entropy computed
on a shard instead of the global batch) moves the losses in the second decimal.  AdamW is nearly
invariant to the scale of a gradient, so a wrong gradient scale would not show in the trained model:
`test_gradients_equal_single_process` checks the gradients themselves.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SIAMESE = ["--epochs", "2", "--batch-size", "16", "--dropout", "0", "--seed", "0", "--quiet"]
CLUSTER = ["--k", "4", "--epochs", "2", "--batch-size", "16", "--seed", "0", "--quiet"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(script, *args, nproc=1):
    """`python script args` in the repository root, or under torchrun with `nproc` processes."""
    launch = [] if nproc == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                                    f"--master_port={free_port()}"]
    cmd = [sys.executable, *launch, str(script), *map(str, args)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert p.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"
    return p


def load(d, name):
    return np.load(Path(d) / name, allow_pickle=False)


def history(d):
    with open(Path(d) / "meta.json", encoding="utf-8") as f:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in json.load(f)["history"]]


def same_run(one, two, arrays):
    """Two runs' directories hold the same files, the same arrays and the same loss history."""
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))  # one set of files, no leftovers
    for name in arrays:
        np.testing.assert_allclose(load(two, name), load(one, name), atol=1e-4, rtol=0, err_msg=name)
    h1, h2 = history(one), history(two)
    assert [h["epoch"] for h in h2] == [h["epoch"] for h in h1]
    for a, b in zip(h1, h2):
        for key in a:
            assert b[key] == pytest.approx(a[key], abs=1e-4), (key, a, b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, tiny_data):
    root = tmp_path_factory.mktemp("ddp")
    train = root / "train"
    run("encode.py", tiny_data[0], "--out", train, "--model", tiny_model, "--quiet")
    p = {}
    for n in (1, 2):
        p[f"siamese{n}"] = run("train_siamese.py", "--data", train, "--out", root / f"siamese{n}", *SIAMESE, nproc=n)
    shutil.copytree(root / "siamese1", root / "init")  # both clustering runs start from the same stage
    run("mine_neighbors.py", root / "init", "--k", 5)
    for n in (1, 2):
        p[f"cluster{n}"] = run("train_cluster.py", "--data", train, "--init", root / "init",
                               "--out", root / f"cluster{n}", *CLUSTER, nproc=n)
    return root, train, p


def test_siamese_two_processes_match_one(runs):
    root, _, logs = runs
    same_run(root / "siamese1", root / "siamese2", ["features.npy"])
    # rank 0 alone prints: every message once
    lines = [line for line in logs["siamese2"].stdout.splitlines() if line.startswith("[siamese")]
    assert len(lines) == len(logs["siamese1"].stdout.splitlines())
    assert sum("epoch 2/2" in line for line in lines) == 1


def test_cluster_two_processes_match_one(runs):
    root, _, logs = runs
    same_run(root / "cluster1", root / "cluster2", ["features.npy", "probs.npy"])
    p1 = load(root / "cluster1", "probs.npy")
    clear = np.sort(p1, 1)[:, -1] - np.sort(p1, 1)[:, -2] > 1e-3  # not a near tie
    assert (load(root / "cluster1", "pred.npy") == load(root / "cluster2", "pred.npy"))[clear].all()
    assert "neighbours re-mined" in logs["cluster2"].stdout


def test_resume_two_processes(runs):
    """All ranks load rank 0's checkpoint: resumed after its last epoch, the run writes the same files."""
    root, train, _ = runs
    b = root / "siamese2_resumed"
    shutil.copytree(root / "siamese2", b, ignore=shutil.ignore_patterns("model.pt", "features.npy"))
    p = run("train_siamese.py", "--data", train, "--out", b, *SIAMESE, "--resume", nproc=2)
    assert "resumed after epoch 2" in p.stdout and "epoch 1/" not in p.stdout
    assert np.array_equal(load(b, "features.npy"), load(root / "siamese2", "features.npy"))
    assert history(b) == history(root / "siamese2")


WORKER = r'''
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from transformers import BertConfig, BertModel
from model import URE, scan_loss
from training import distributed, encode_views, gather, setup_distributed, shard

rank, world = setup_distributed()
torch.manual_seed(0)
bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
model = URE(bert, 16, 4, k=3)
n, width = 7, 10                       # 7 rows: shards of 4 and 3
rng = np.random.default_rng(0)
lengths = rng.integers(8, width + 1, n)
arrays = {"input_ids": rng.integers(5, 50, (n, width)) * (np.arange(width) < lengths[:, None]),
          "lengths": lengths, "head_pos": np.full(n, 1), "tail_pos": np.full(n, 4), "head_end": np.full(n, 3),
          "tail_end": np.full(n, 6)}

def loss_of(r1, r2, neighbour):        # a Siamese and a SCAN loss on the whole batch
    return model.siamese(r1, r2)[0] + scan_loss(model.cluster_head(r1), model.cluster_head(neighbour), 2.0)[0]

r1, r2 = encode_views(model.encoder, arrays, np.arange(n), views=2, piece=n)  # one process, one pass
loss_of(r1, r2, encode_views(model.encoder, arrays, np.arange(n)[::-1], piece=n)[0]).backward()
reference = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
model.zero_grad(set_to_none=True)
encoder = distributed(model.encoder, world)  # kept: DDP's backward needs the wrapper alive
mine = shard(np.arange(n), rank, world)      # three encoder passes of pieces of 2 on each rank
r1, r2 = (gather(r, n, world) for r in encode_views(encoder, arrays, mine, views=2, piece=2))
neighbour = gather(encode_views(encoder, arrays, shard(np.arange(n)[::-1], rank, world), piece=2)[0], n, world)
loss_of(r1, r2, neighbour).backward()
grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
assert grads.keys() == reference.keys() and any(k.startswith("encoder.") for k in grads)
# relative to the largest gradient of all: the key biases' gradients are zero but for rounding
scale = max(g.abs().max().item() for g in reference.values())
worst = max((grads[k] - g).abs().max().item() / scale for k, g in reference.items())
print(f"rank {rank}: {len(grads)} gradients, largest difference {worst:.1e} of the largest gradient",
      file=sys.stderr)
assert worst < 1e-5, worst
'''


def test_gradients_equal_single_process(tmp_path):
    """The gradient of every parameter, encoder and heads, with the batch split over 2 ranks equals the
    one-process gradient of the whole batch (gather's backward sums over ranks, DDP averages)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    p = run(script, REPO, nproc=2)
    assert p.stderr.count("largest difference") == 2
