"""Stage 2: Siamese representation learning (paper section 3.2).

    python train_siamese.py --data runs/default/train --out runs/default/siamese

Each batch of marked sentences goes through the encoder twice in training mode; the two dropout masks
make the two views of a positive pair.  The representation r (model.RelationEncoder) of each view goes
through the projector (z) and the predictor (p), and the loss is SimSiam's symmetric negative cosine
with stop-gradient (model.URE.siamese):
    L = -( cos(p1, sg(z2)) + cos(p2, sg(z1)) ) / 2.
No negative pairs: two instances of similar relations are never pushed apart.  Only the top
--train-layers layers of the encoder learn (model.train_top; README, "Choices").  Both views are run
together, each row with its own dropout mask, in length-sorted pieces of the random batch
(model.encode_views), which is cheaper than two passes of the batch padded to its longest sentence.

Reads the encoded data directory (encode.py).  Writes into --out:
    model.pt          encoder + projector + predictor state dict, with what rebuilds them offline
    features.npy      float32 [N, D]: eval-mode r of every instance
    checkpoint.pt     after each epoch: model, optimiser, scheduler, RNG, epoch (--resume goes on from it)
    meta.json         arguments, per-epoch loss, collapse signal and seconds, timing; written last
Per epoch it logs the loss and SimSiam's collapse signal: the std of L2-normalised z per dimension,
times sqrt(d); about 1 is healthy, near 0 is collapse (a warning is printed).

Under `torchrun --nproc_per_node=N train_siamese.py ...` each rank encodes 1/N of every batch and the
loss runs on the gathered batch (model.py, "Scale-out"): the same training as one process at the same
--batch-size, except for the dropout masks; only rank 0 writes files.
"""
import argparse
import os
import time

import numpy as np
import torch

from data import DataError, Log, begin_stage, fail, fingerprint, length_batches, load_encoded, save_json, save_npy
from model import (URE, bert_config, build_encoder, collapse_std, device, distributed, encode_views, gather,
                   load_checkpoint, load_tokenizer, make_optimizer, represent_all, save_checkpoint, save_model,
                   setup_distributed, shard, train_top)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="encoded data directory (encode.py)")
    ap.add_argument("--out", required=True, help="directory to write")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5, help="encoder learning rate")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="projector and predictor learning rate")
    ap.add_argument("--dropout", type=float, default=0.1, help="dropout that makes the positive pair (paper: 0.01-0.5)")
    ap.add_argument("--proj-dim", type=int, default=768, help="projector output size")
    ap.add_argument("--pred-dim", type=int, default=192, help="predictor bottleneck size")
    ap.add_argument("--train-layers", type=int, default=2,
                    help="train only this many top layers of the encoder (0: all, embeddings too)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="go on from --out/checkpoint.pt")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    rank, world = setup_distributed()
    log = Log("siamese", args.quiet or rank > 0)
    log("settings: " + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    torch.manual_seed(args.seed)

    arrays, data_meta = load_encoded(args.data)
    n = data_meta["n_instances"]
    log(f"read {n} encoded instances from {args.data}")
    tokenizer = load_tokenizer(os.path.join(args.data, "tokenizer"))
    bert = build_encoder(data_meta["model"], tokenizer, args.dropout)
    model = URE(bert, args.proj_dim, args.pred_dim, pooling=data_meta["pooling"]).to(device())
    train_top(model.encoder, args.train_layers)
    batches_per_epoch = len(length_batches(arrays["lengths"], args.batch_size))
    opt, sched = make_optimizer(model, args.lr, args.head_lr, args.epochs * batches_per_epoch)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "data", "quiet")}
    run_id = fingerprint(data_meta["fingerprint"], settings)

    if rank == 0:
        begin_stage(args.out)
    checkpoint, start, history = os.path.join(args.out, "checkpoint.pt"), 0, []
    if args.resume and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, model, opt, sched, run_id)
        start, history = state["epoch"], state["history"]
        log(f"resumed after epoch {start} from {checkpoint}")

    encoder = distributed(model.encoder, world)
    model.train()
    for epoch in range(start, args.epochs):
        t0, rng = time.time(), np.random.default_rng([args.seed, epoch])
        if world > 1:  # each rank its own dropout masks, from a stream that --resume can start again
            torch.manual_seed(int(np.random.SeedSequence([args.seed, epoch, rank]).generate_state(1)[0]))
        losses, stds = [], []
        for b in log.progress(length_batches(arrays["lengths"], args.batch_size, rng), f"epoch {epoch + 1}"):
            if len(b) < max(2, world):  # BatchNorm needs two rows, and every rank one
                continue
            r1, r2 = encode_views(encoder, arrays, shard(b, rank, world), views=2)
            loss, z = model.siamese(gather(r1, len(b), world), gather(r2, len(b), world))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            stds.append(collapse_std(z))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "z_std": float(np.mean(stds)),
                        "seconds": round(time.time() - t0, 2)})
        log(f"epoch {epoch + 1}/{args.epochs}: loss {history[-1]['loss']:.4f}, "
            f"collapse signal std(z/|z|)*sqrt(d) {history[-1]['z_std']:.2f} (1 healthy, 0 collapsed)")
        if history[-1]["z_std"] < 0.3:
            log("WARNING: the projections are collapsing (see --dropout, --lr, --head-lr)")
        if rank == 0:
            save_checkpoint(checkpoint, model, opt, sched, epoch + 1, run_id=run_id, history=history)

    feats, _ = represent_all(model.encoder, arrays, lambda b: log.progress(b, "features"), rank, world)
    if rank > 0:
        return
    config = {"bert": bert_config(bert), "proj_dim": args.proj_dim, "pred_dim": args.pred_dim,
              "pooling": data_meta["pooling"],
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
