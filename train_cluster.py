"""Stage 4: relational semantic clustering (paper section 3.3).

    python train_cluster.py --data runs/default/train --init runs/default/siamese --out runs/default/cluster

Starts from the Siamese stage's model and the neighbours mined from its features (mine_neighbors.py).
A clustering head maps r (model.RelationEncoder) to K cluster probabilities phi(x).  Each step takes a
batch of instances and, for each, one of its mined neighbours drawn at random, and minimises
    L = L_siam(x)  +  L_scan(x, neighbour),
    L_scan = -mean log <phi(x), phi(neighbour)>  -  lambda * H(mean phi(x))        (model.scan_loss)
so an instance and its neighbours get the same confident prediction while the entropy of the mean
prediction keeps the K clusters in use; the Siamese loss keeps shaping the encoder meanwhile (its top
--train-layers layers, as in train_siamese.py).
Every --remine-every epochs the neighbours are mined again from the current features, with the
function mine_neighbors.mine, so they improve as the features do.

Writes into --out:
    model.pt        encoder + Siamese heads + clustering head
    features.npy    float32 [N, D]   eval-mode r after training
    probs.npy       float32 [N, K]   cluster probabilities
    pred.npy        int32   [N]      argmax cluster of each instance
    checkpoint.pt   after each epoch (--resume goes on from it)
    meta.json       arguments, per-epoch losses and seconds, cluster sizes, timing; written last

Under `torchrun --nproc_per_node=N train_cluster.py ...` each rank encodes 1/N of every batch and of its
neighbours, and the losses run on the gathered batch (model.py, "Scale-out"): the same training as one
process at the same --batch-size, except for the dropout masks; only rank 0 writes files.
"""
import argparse
import os
import time

import numpy as np
import torch

from data import (DataError, Log, begin_stage, check_source, fail, fingerprint, length_batches, load_encoded, load_json, load_meta,
                  load_npy, save_json, save_npy)
from estimate_k import estimate_k, record
from mine_neighbors import mine
from model import (URE, device, distributed, encode_views, gather, load_checkpoint, load_model, make_optimizer,
                   represent_all, save_checkpoint, save_model, scan_loss, setup_distributed, shard, train_top)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="encoded data directory (encode.py)")
    ap.add_argument("--init", required=True, help="Siamese stage directory with model.pt and neighbors.npy")
    ap.add_argument("--out", required=True, help="directory to write")
    ap.add_argument("--k", default="10", help="number of clusters (papers: 10); auto: estimated without labels "
                    "from the Siamese features (estimate_k.py), recorded in meta.json")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5, help="encoder learning rate")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the heads")
    ap.add_argument("--entropy-weight", type=float, default=2.0, help="lambda of the entropy term")
    ap.add_argument("--siamese-weight", type=float, default=1.0, help="weight of the Siamese loss")
    ap.add_argument("--remine-every", type=int, default=1, help="epochs between neighbour re-mining (0: never)")
    ap.add_argument("--train-layers", type=int, default=2,
                    help="train only this many top layers of the encoder (0: all, embeddings too)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="go on from --out/checkpoint.pt")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    rank, world = setup_distributed()
    log = Log("cluster", args.quiet or rank > 0)
    log("settings: " + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    torch.manual_seed(args.seed)

    arrays, data_meta = load_encoded(args.data)
    n = data_meta["n_instances"]
    init_meta = load_meta(args.init, ("siamese",))
    check_source(init_meta, data_meta, args.init)
    mined = load_json(os.path.join(args.init, "neighbors.json"))
    if mined["features_fingerprint"] != init_meta["fingerprint"]:
        raise DataError(f"{args.init}/neighbors.npy: mined from other features; run mine_neighbors.py again")
    neighbors = np.array(load_npy(os.path.join(args.init, "neighbors.npy"), n))
    log(f"read {n} encoded instances from {args.data}, model and {neighbors.shape[1]} neighbours each from {args.init}")

    k_estimate = None
    if args.k == "auto":  # label-free: the silhouette curve of the Siamese features (estimate_k.py)
        t0 = time.time()
        args.k, curve = estimate_k(load_npy(os.path.join(args.init, "features.npy"), n), seed=args.seed, log=log)
        k_estimate = record(args.k, curve, features=os.path.abspath(os.path.join(args.init, "features.npy")),
                            seconds=round(time.time() - t0, 1))
        log(f"--k auto: K = {args.k}, estimated without labels from the Siamese features "
            f"(scanned K = {curve['k'][0]}..{curve['k'][-1]}, {k_estimate['seconds']} s)")
    else:
        try:
            args.k = int(args.k)
        except ValueError:
            raise DataError(f"--k {args.k!r}: give a number of clusters or auto") from None
    siamese, config = load_model(os.path.join(args.init, "model.pt"))
    model = URE(siamese.encoder.bert, config["proj_dim"], config["pred_dim"], args.k, pooling=config["pooling"])
    model.projector.load_state_dict(siamese.projector.state_dict())
    model.predictor.load_state_dict(siamese.predictor.state_dict())
    model.to(device())
    train_top(model.encoder, args.train_layers)
    init = model.cluster_head.init_from(load_npy(os.path.join(args.init, "features.npy"), n), args.seed)
    log(f"cluster prototypes start at the k-means centroids of the Siamese features "
        f"(sizes {sorted(np.bincount(init.numpy(), minlength=args.k).tolist(), reverse=True)})")
    batches_per_epoch = len(length_batches(arrays["lengths"], args.batch_size))
    opt, sched = make_optimizer(model, args.lr, args.head_lr, args.epochs * batches_per_epoch)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "data", "init", "quiet")}
    run_id = fingerprint(data_meta["fingerprint"], init_meta["fingerprint"], settings)

    if rank == 0:
        begin_stage(args.out)
    checkpoint, start, history = os.path.join(args.out, "checkpoint.pt"), 0, []
    if args.resume and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, model, opt, sched, run_id)
        start, history, neighbors = state["epoch"], state["history"], state["neighbors"].numpy()
        log(f"resumed after epoch {start} from {checkpoint}")

    encoder = distributed(model.encoder, world)
    model.train()
    for epoch in range(start, args.epochs):
        t0, rng = time.time(), np.random.default_rng([args.seed, epoch])
        if world > 1:  # each rank its own dropout masks, from a stream that --resume can start again
            torch.manual_seed(int(np.random.SeedSequence([args.seed, epoch, rank]).generate_state(1)[0]))
        sums = np.zeros(4)
        steps = 0
        for b in log.progress(length_batches(arrays["lengths"], args.batch_size, rng), f"epoch {epoch + 1}"):
            if len(b) < max(2, world):  # BatchNorm needs two rows, and every rank one
                continue
            nb = neighbors[b, rng.integers(neighbors.shape[1], size=len(b))]
            r1, r2 = encode_views(encoder, arrays, shard(b, rank, world), views=2)
            r1, r2 = gather(r1, len(b), world), gather(r2, len(b), world)
            siam, _ = model.siamese(r1, r2)
            rn = gather(encode_views(encoder, arrays, shard(nb, rank, world))[0], len(b), world)
            scan, consistency, entropy = scan_loss(model.cluster_head(r1), model.cluster_head(rn), args.entropy_weight)
            loss = args.siamese_weight * siam + scan
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += [loss.item(), siam.item(), consistency.item(), entropy.item()]
            steps += 1
        remine = args.remine_every and (epoch + 1) % args.remine_every == 0 and epoch + 1 < args.epochs
        if remine:
            feats, _ = represent_all(model.encoder, arrays, lambda b: log.progress(b, "re-mining"), rank, world)
            neighbors, _ = mine(feats, neighbors.shape[1])  # on every rank: the same features, the same result
            model.train()
        history.append(dict(zip(("loss", "siamese", "consistency", "entropy"), (sums / max(steps, 1)).tolist()),
                            epoch=epoch + 1, seconds=round(time.time() - t0, 2)))
        h = history[-1]
        log(f"epoch {epoch + 1}/{args.epochs}: loss {h['loss']:.4f} (Siamese {h['siamese']:.4f}, consistency "
            f"{h['consistency']:.4f}, entropy {h['entropy']:.3f} of at most {np.log(args.k):.3f})"
            + (", neighbours re-mined" if remine else ""))
        if rank == 0:
            save_checkpoint(checkpoint, model, opt, sched, epoch + 1, run_id=run_id, history=history,
                            neighbors=torch.from_numpy(neighbors))

    feats, probs = represent_all(model.encoder, arrays, lambda b: log.progress(b, "features"), rank, world,
                                 model.cluster_head)
    if rank > 0:
        return
    pred = probs.argmax(1).astype(np.int32)
    sizes = np.bincount(pred, minlength=args.k)
    save_model(os.path.join(args.out, "model.pt"), model, {**config, "k": args.k})
    save_npy(os.path.join(args.out, "features.npy"), feats)
    save_npy(os.path.join(args.out, "probs.npy"), probs)
    save_npy(os.path.join(args.out, "pred.npy"), pred)
    log(f"cluster sizes: {sorted(sizes.tolist(), reverse=True)}; mean confidence {probs.max(1).mean():.3f}")
    save_json(os.path.join(args.out, "meta.json"),
              {"stage": "cluster", "data": os.path.abspath(args.data), "data_fingerprint": data_meta["fingerprint"],
               "init": os.path.abspath(args.init), "n_instances": n, "settings": settings, "history": history,
               "cluster_sizes": sizes.tolist(), "fingerprint": run_id, "seconds": round(log.elapsed(), 1),
               "k": args.k, **({"k_estimate": k_estimate} if k_estimate else {})})
    log.done(f"model.pt, features.npy {feats.shape}, probs.npy, pred.npy, checkpoint.pt and meta.json to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
