"""Stage 4: relational semantic clustering (paper section 3.3).

    python train_cluster.py --data runs/default/train --init runs/default/siamese --out runs/default/cluster

Starts from the Siamese stage's model and the neighbours mined from its features (mine_neighbors.py).
A clustering head maps r (model.RelationEncoder) to K cluster probabilities phi(x).  Each step takes a
batch of instances and, for each, one of its mined neighbours drawn at random (with --context-neighbors,
the default, an instance with a relation-context group takes a member of its group instead; the
Siamese views follow --positives, as in train_siamese.py), and minimises
    L = L_siam(x)  +  L_scan(x, neighbour),
    L_scan = -mean log <phi(x), phi(neighbour)>  -  lambda * H(mean phi(x))        (model.scan_loss)
so an instance and its neighbours get the same confident prediction while the entropy of the mean
prediction keeps the K clusters in use; the Siamese loss keeps shaping the encoder meanwhile (its top
--train-layers layers, as in train_siamese.py).
Every --remine-every epochs the neighbours are mined again from the current features, with the
function mine_neighbors.mine, so they improve as the features do.  Then (refit_head, not in the paper),
the head is fitted to the encoder it ends with: the encoder fixed, the prototypes restarted at the
k-means centroids of its final features and trained with the SCAN loss alone on their neighbours for
--refit-epochs epochs, since prototypes trained while the features moved end behind them.  Last (not
in the paper), the head's probabilities are smoothed over those neighbours by the kNN vote
(model.knn_vote) --vote-steps times: each instance's probabilities averaged with its neighbours'.

Writes into --out:
    model.pt        encoder + Siamese heads + clustering head
    features.npy    float32 [N, D]   eval-mode r after training
    probs.npy       float32 [N, K]   cluster probabilities (of the refitted head, after the vote)
    pred.npy        int32   [N]      argmax cluster of each instance
    checkpoint.pt   after each epoch (--resume goes on from it)
    meta.json       arguments, per-epoch losses and seconds, cluster sizes, timing; written last

Under `torchrun --nproc_per_node=N train_cluster.py ...` each rank encodes 1/N of every batch and of its
neighbours, and the losses run on the gathered batch (training.py, "Scale-out"): the same training as one
process at the same --batch-size, except for the dropout masks; only rank 0 writes files.
"""
import argparse
import os
import time

import numpy as np
import torch

from data import DataError
from estimate_k import estimate_k, record, type_pairs_of
from mine_neighbors import mine
from model import URE, knn_vote, scan_loss, train_top
from rundir import check_source, fail, fingerprint, load_encoded, load_json, load_meta, load_npy, save_json, save_npy
from training import (InPrecision, arguments, begin_training, context_groups, device, distributed, encode_views,
                      epochs, gather, load_model, optimizer_and_resume, partners, positive_views, represent_all,
                      save_checkpoint, save_model, second_views, shard, step)


def refit_head(head, feats, neighbors, args):
    """The head fitted to the encoder it ends with.  During the joint epochs the prototypes chase
    features that keep moving, and they end behind them (README, "Choices").  So the encoder is now
    fixed: its eval-mode features are computed once and their `neighbors` mined by the caller (as many
    as the Siamese stage's; the kNN vote uses them too), the prototypes restarted at their k-means
    centroids, and only the head trained with the SCAN loss for --refit-epochs epochs of random batches.
    Returns the k-means cluster sizes."""
    x = torch.from_numpy(feats).to(device())
    sizes = np.bincount(head.init_from(feats, args.seed).numpy(), minlength=head.out_features)
    opt = torch.optim.Adam(head.parameters(), lr=args.head_lr)
    rng = np.random.default_rng([args.seed, args.epochs])
    for _ in range(args.refit_epochs):
        for b in np.array_split(rng.permutation(len(x)), max(1, len(x) // args.batch_size)):
            nb = neighbors[b, rng.integers(neighbors.shape[1], size=len(b))]
            loss, _, _ = scan_loss(head(x[b]), head(x[nb]), args.entropy_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return sizes


def main():
    ap = arguments(__doc__)
    ap.add_argument("--init", required=True, help="Siamese stage directory with model.pt and neighbors.npy")
    ap.add_argument("--k", default="10", help="number of clusters (papers: 10); auto: estimated without labels "
                    "from the Siamese features (estimate_k.py), recorded in meta.json")
    ap.add_argument("--entropy-weight", type=float, default=2.0, help="lambda of the entropy term")
    ap.add_argument("--siamese-weight", type=float, default=1.0, help="weight of the Siamese loss")
    ap.add_argument("--context-neighbors", action=argparse.BooleanOptionalAction, default=True,
                    help="with --positives key: an instance with a relation-context group takes its SCAN neighbour "
                         "from that group (training.partners), the others from the mined neighbours")
    ap.add_argument("--remine-every", type=int, default=1, help="epochs between neighbour re-mining (0: never)")
    ap.add_argument("--refit-epochs", type=int, default=10,
                    help="epochs of the last step, the head alone fitted to the final features (refit_head; 0: none, "
                         "the head as the joint epochs leave it)")
    ap.add_argument("--vote-steps", type=int, default=2,
                    help="steps of the kNN vote over the final features' neighbours (model.knn_vote; 0: the head's "
                         "own probabilities)")
    args = ap.parse_args()
    if args.vote_steps < 0:
        raise DataError(f"--vote-steps {args.vote_steps}: must be 0 or more")
    rank, world, log, settings = begin_training("cluster", args)

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
    if args.k == "auto":  # label-free: k-means on the Siamese features scored by estimate_k.py (modularity)
        t0 = time.time()
        args.k, curve = estimate_k(load_npy(os.path.join(args.init, "features.npy"), n), seed=args.seed, log=log,
                                   type_pair=type_pairs_of(args.data))
        k_estimate = record(args.k, curve, features=os.path.abspath(os.path.join(args.init, "features.npy")),
                            seconds=round(time.time() - t0, 1))
        log(f"--k auto: K = {args.k}, estimated without labels from the Siamese features "
            f"(scanned K = {curve['k'][0]}..{curve['k'][-1]}, {k_estimate['seconds']} s)")
    else:
        try:
            args.k = int(args.k)
        except ValueError:
            raise DataError(f"--k {args.k!r}: give a number of clusters or auto") from None
    settings["k"] = args.k  # the K trained with, estimated or given
    siamese, config = load_model(os.path.join(args.init, "model.pt"))
    model = URE(siamese.encoder.bert, config["proj_dim"], config["pred_dim"], args.k, pooling=config["pooling"],
                context_dims=config.get("context_dims", 0))
    model.encoder.load_state_dict(siamese.encoder.state_dict())  # the encoder with its context map, if any
    model.projector.load_state_dict(siamese.projector.state_dict())
    model.predictor.load_state_dict(siamese.predictor.state_dict())
    model.to(device())
    train_top(model.encoder, args.train_layers)
    init = model.cluster_head.init_from(load_npy(os.path.join(args.init, "features.npy"), n), args.seed)
    log(f"cluster prototypes start at the k-means centroids of the Siamese features "
        f"(sizes {sorted(np.bincount(init.numpy(), minlength=args.k).tolist(), reverse=True)})")
    run_id = fingerprint(data_meta["fingerprint"], init_meta["fingerprint"], settings)
    opt, sched, checkpoint, state = optimizer_and_resume(model, args, arrays, run_id, rank, log)
    start, history = (state["epoch"], state["history"]) if state else (0, [])
    if state:
        neighbors = state["neighbors"].numpy()

    groups = context_groups(arrays, args)
    forward = InPrecision(model.encoder, args.precision)
    encoder = distributed(forward, world)
    model.train()
    for epoch, rng, batches in epochs(args, arrays, start, rank, world, log):
        t0, sums, steps = time.time(), np.zeros(4), 0
        for b in batches:
            nb = neighbors[b, rng.integers(neighbors.shape[1], size=len(b))]
            if groups is not None and args.context_neighbors:
                nb = np.where(groups[b] >= 0, partners(groups, b, rng), nb)
            pb = second_views(arrays, b, rng, args, groups)
            pb = None if pb is None else shard(pb, rank, world)
            r1, r2 = positive_views(encoder, arrays, shard(b, rank, world), pb)
            r1, r2 = gather(r1, len(b), world), gather(r2, len(b), world)
            siam, _ = model.siamese(r1, r2)
            rn = gather(encode_views(encoder, arrays, shard(nb, rank, world))[0], len(b), world)
            scan, consistency, entropy = scan_loss(model.cluster_head(r1), model.cluster_head(rn), args.entropy_weight)
            loss = args.siamese_weight * siam + scan
            step(opt, sched, loss)
            sums += [loss.item(), siam.item(), consistency.item(), entropy.item()]
            steps += 1
        remine = args.remine_every and (epoch + 1) % args.remine_every == 0 and epoch + 1 < args.epochs
        if remine:
            feats, _ = represent_all(forward, arrays, lambda b: log.progress(b, "re-mining"), rank, world)
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

    feats, _ = represent_all(forward, arrays, lambda b: log.progress(b, "features"), rank, world)
    if rank > 0:
        return
    final_neighbors = None
    if args.refit_epochs or args.vote_steps:
        final_neighbors, _ = mine(feats, neighbors.shape[1])  # as many as the Siamese stage's
    if args.refit_epochs:
        t0 = time.time()
        sizes = refit_head(model.cluster_head, feats, final_neighbors, args)
        log(f"head refitted to the final features: prototypes restarted at their k-means centroids (sizes "
            f"{sorted(sizes.tolist(), reverse=True)}), {args.refit_epochs} epochs of the SCAN loss alone on "
            f"neighbours mined from them ({time.time() - t0:.1f} s)")
    with torch.no_grad():
        probs = model.cluster_head(torch.from_numpy(feats).to(device())).softmax(-1).cpu().numpy()
    head_pred = probs.argmax(1)
    for _ in range(args.vote_steps):
        probs = knn_vote(probs, probs[final_neighbors])
    pred = probs.argmax(1).astype(np.int32)
    if args.vote_steps:
        log(f"kNN vote, {args.vote_steps} steps over the {final_neighbors.shape[1]} neighbours of the final features: "
            f"{int((pred != head_pred).sum())} of {n} instances change cluster")
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
               "k": args.k, "vote": {"steps": args.vote_steps, "neighbors": neighbors.shape[1]},
               **({"k_estimate": k_estimate} if k_estimate else {})})
    log.done(f"model.pt, features.npy {feats.shape}, probs.npy, pred.npy, checkpoint.pt and meta.json to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
