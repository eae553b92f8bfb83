"""Stage 2: Siamese representation learning (paper section 3.2).

    python train_siamese.py --data runs/default/train --out runs/default/siamese

Each batch of marked sentences goes through the encoder twice in training mode, as the two views of a
positive pair.  With --positives dropout (the paper) the second view is the same sentence under another
dropout mask.  With --positives key it is another sentence with the same relation
context (encode.py's context_key.npy: the same words between the entities, the same order and type pair;
training.partners), so that one relation is tied across different entities; an instance whose context
no other shares keeps its dropout view.  With --positives entity it is the same sentence with its head
and its tail replaced by the mentions of other instances of the same types (training.substituted).
Before the first epoch (--context-map, the default; not in the paper) the stage fits the context map
that r ends with (fit_context_map): the pretrained encoder's r of every training instance, mapped by
the linear discriminant of encode.py's relation-context groups (model.lda_map; no label is read) to
64 directions, fixed from then on and saved in model.pt (and checkpoint.pt, from which --resume takes
it instead of fitting it again), so that every later stage and predict.py work in the mapped space
(README, "Choices"); --no-context-map keeps the paper's r.
The representation r (model.RelationEncoder) of each view goes
through the projector (z) and the predictor (p), and the loss is SimSiam's symmetric negative cosine
with stop-gradient (model.URE.siamese):
    L = -( cos(p1, sg(z2)) + cos(p2, sg(z1)) ) / 2.
No negative pairs: two instances of similar relations are never pushed apart.  Only the top
--train-layers layers of the encoder learn (model.train_top; README, "Choices").  Both views are run
together, each row with its own dropout mask, in length-sorted pieces of the random batch
(training.encode_views), which is cheaper than two passes of the batch padded to its longest sentence;
with --precision bf16 the encoder runs under bf16 autocast (training.py, "Precision").

Reads the encoded data directory (encode.py).  Writes into --out:
    model.pt          encoder + projector + predictor state dict, with what rebuilds them offline
    features.npy      float32 [N, D]: eval-mode r of every instance (D = 64 with the context map)
    checkpoint.pt     after each epoch: model, optimiser, scheduler, RNG, epoch (--resume goes on from it)
    meta.json         arguments, per-epoch loss, collapse measure and seconds, timing; written last
Per epoch it logs the loss and the collapse measure (model.z_rank): the effective rank of each batch's
projections z as a share of the most it can be, averaged over the epoch; about 1 is healthy, and below
COLLAPSED the projections span few directions: a warning is printed.

Under `torchrun --nproc_per_node=N train_siamese.py ...` each rank encodes 1/N of every batch and the
loss runs on the gathered batch (training.py, "Scale-out"): the same training as one process at the same
--batch-size, except for the dropout masks; only rank 0 writes files.
"""
import argparse
import os
import time

import numpy as np

from data import DataError
from model import URE, RelationEncoder, lda_map, train_top, z_rank
from rundir import fail, fingerprint, load_encoded, save_json, save_npy
from training import (InPrecision, arguments, begin_training, bert_config, build_encoder, context_groups, device,
                      distributed, epochs, gather, load_tokenizer, optimizer_and_resume, positive_views, represent_all,
                      safe_load, save_checkpoint, save_model, second_views, shard, step)

COLLAPSED = 0.2  # z_rank below this: the projections span under a fifth of the directions they could


def fit_context_map(bert, arrays, args, pooling, log, rank, world):
    """The relation-context map of model.RelationEncoder, fitted once before training: the pretrained
    encoder's eval-mode r of every training instance, L2-normalised, and model.lda_map of them by
    encode.py's relation-context groups (context_key.npy; no label is read).  Returns (mean, map), or
    None, with a line that says why, where no context group holds two instances."""
    if "context_key" not in arrays:
        raise DataError(f"{args.data}: no context_key.npy (encoded by an older version): run encode.py again, "
                        f"or pass --no-context-map")
    t0 = time.time()
    frozen = InPrecision(RelationEncoder(bert, pooling).to(device()), args.precision)
    feats, _ = represent_all(frozen, arrays, lambda b: log.progress(b, "pretrained features"), rank, world)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    try:
        fit = lda_map(feats, np.asarray(arrays["context_key"]))
    except DataError as e:
        log(f"context map: {e}; r is left unmapped")
        return None
    log(f"context map fitted without labels to the pretrained r of {len(feats)} instances: {feats.shape[1]} -> "
        f"{fit[1].shape[1]} dimensions ({time.time() - t0:.1f} s)")
    return fit


def resumed_context_dims(args):
    """With --resume and a checkpoint to go on from: the width of the context map it holds (0: none),
    whose buffers will replace any map fitted now, so none is; else None."""
    path = os.path.join(args.out, "checkpoint.pt")
    if not (args.resume and os.path.exists(path)):
        return None
    m = safe_load(path, "checkpoint")["model"].get("encoder.context_map")
    return 0 if m is None else m.shape[1]


def main():
    ap = arguments(__doc__)
    ap.add_argument("--dropout", type=float, default=0.1, help="dropout that makes the positive pair (paper: 0.01-0.5)")
    ap.add_argument("--proj-dim", type=int, default=768, help="projector output size")
    ap.add_argument("--pred-dim", type=int, default=192, help="predictor bottleneck size")
    ap.add_argument("--context-map", action=argparse.BooleanOptionalAction, default=True,
                    help="map r by the relation-context LDA fitted to the pretrained r before training "
                         "(model.RelationEncoder; no labels); --no-context-map: r as in the paper")
    args = ap.parse_args()
    rank, world, log, settings = begin_training("siamese", args)

    arrays, data_meta = load_encoded(args.data)
    n = data_meta["n_instances"]
    log(f"read {n} encoded instances from {args.data}")
    tokenizer = load_tokenizer(os.path.join(args.data, "tokenizer"))
    bert = build_encoder(data_meta["model"], tokenizer, args.dropout)
    fit, resumed = None, resumed_context_dims(args)
    if resumed is not None:
        log(f"context map: {resumed or 'none'} dimensions, from the checkpoint to resume (not fitted again)")
    elif args.context_map:
        fit = fit_context_map(bert, arrays, args, data_meta["pooling"], log, rank, world)
    context_dims = resumed if resumed is not None else 0 if fit is None else fit[1].shape[1]
    model = URE(bert, args.proj_dim, args.pred_dim, pooling=data_meta["pooling"], context_dims=context_dims)
    if fit is not None:
        model.encoder.set_context_map(*fit)
    model.to(device())
    train_top(model.encoder, args.train_layers)
    run_id = fingerprint(data_meta["fingerprint"], settings)
    opt, sched, checkpoint, state = optimizer_and_resume(model, args, arrays, run_id, rank, log)
    start, history = (state["epoch"], state["history"]) if state else (0, [])

    groups = context_groups(arrays, args)
    forward = InPrecision(model.encoder, args.precision)
    encoder = distributed(forward, world)
    model.train()
    for epoch, rng, batches in epochs(args, arrays, start, rank, world, log):
        t0, losses, ranks = time.time(), [], []
        for b in batches:
            pb = second_views(arrays, b, rng, args, groups)
            pb = None if pb is None else shard(pb, rank, world)
            r1, r2 = positive_views(encoder, arrays, shard(b, rank, world), pb)
            loss, z = model.siamese(gather(r1, len(b), world), gather(r2, len(b), world))
            step(opt, sched, loss)
            losses.append(loss.item())
            ranks.append(z_rank(z))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "z_rank": float(np.mean(ranks)),
                        "seconds": round(time.time() - t0, 2)})
        log(f"epoch {epoch + 1}/{args.epochs}: loss {history[-1]['loss']:.4f}, "
            f"collapse measure: effective rank of z {history[-1]['z_rank']:.2f} of its most (1 healthy)")
        if history[-1]["z_rank"] < COLLAPSED:
            log("WARNING: the projections are collapsing (see --dropout, --lr, --head-lr)")
        if rank == 0:
            save_checkpoint(checkpoint, model, opt, sched, epoch + 1, run_id=run_id, history=history)

    feats, _ = represent_all(forward, arrays, lambda b: log.progress(b, "features"), rank, world)
    if rank > 0:
        return
    config = {"bert": bert_config(bert), "proj_dim": args.proj_dim, "pred_dim": args.pred_dim,
              "pooling": data_meta["pooling"], "context_dims": context_dims,
              "dropout": args.dropout}
    save_model(os.path.join(args.out, "model.pt"), model, config)
    save_npy(os.path.join(args.out, "features.npy"), feats)
    save_json(os.path.join(args.out, "meta.json"),
              {"stage": "siamese", "data": os.path.abspath(args.data), "data_fingerprint": data_meta["fingerprint"],
               "n_instances": n, "settings": settings, "history": history, "fingerprint": run_id,
               "seconds": round(log.elapsed(), 1)})
    log.done(f"model.pt, features.npy {feats.shape}, checkpoint.pt and meta.json to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
