"""Stage 5: apply a trained model to another encoded file, with no retraining and no labels.

    python encode.py data/test.json --out runs/default/test --tokenizer-from runs/default/train
    python predict.py --model runs/default/cluster --data runs/default/test --out runs/default/test_cluster

The papers train on a train split and report the test split; this is how.  --model is a training
stage's directory: the clustering stage's (features, cluster probabilities and clusters) or the Siamese
stage's (features only).  The data must have been encoded with the same marker vocabulary, i.e. with
encode.py --tokenizer-from the training data's directory.

With a clustering model trained with the kNN vote (train_cluster.py --vote-steps, the default), each new
instance's probabilities are the head's averaged with those of its nearest training instances, as many
as the training stage's neighbours, as train_cluster.py wrote them (its features.npy and probs.npy):
one more step of the vote (model.knn_vote), the new instance joining the training instances' graph.

Writes into --out:
    features.npy   float32 [N, D]    eval-mode r (model.RelationEncoder; --precision bf16: computed under bf16
                                     autocast, written in float32)
    probs.npy      float32 [N, K]    with a clustering head: cluster probabilities (after the vote)
    pred.npy       int32   [N]       with a clustering head: argmax cluster
    meta.json      the model and data it came from, and their fingerprints; written last
"""
import argparse
import os

import numpy as np

from data import DataError
from mine_neighbors import mine
from model import knn_vote
from rundir import (Log, begin_stage, check_source, fail, fingerprint, load_encoded, load_meta, load_npy, save_json,
                    save_npy)
from training import InPrecision, add_precision, check_precision, device, length_batches, load_model, represent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="directory of train_siamese.py or train_cluster.py")
    ap.add_argument("--data", required=True, help="encoded data directory (encode.py --tokenizer-from ...)")
    ap.add_argument("--out", required=True, help="directory to write")
    ap.add_argument("--batch-size", type=int, default=64)
    add_precision(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    log = Log("predict", args.quiet)
    check_precision(args.precision, log)

    if os.path.realpath(args.out) in (os.path.realpath(args.model), os.path.realpath(args.data)):
        raise DataError(f"--out {args.out}: is the --model or --data directory; predict.py needs a directory "
                        f"of its own")
    trained = load_meta(args.model, ("siamese", "cluster"))
    arrays, data_meta = load_encoded(args.data)
    train_data = load_meta(trained["data"], ("encode",))
    check_source(trained, train_data, args.model)  # its markers are the ones the model was trained with
    if (data_meta["markers"], data_meta["model"]) != (train_data["markers"], train_data["model"]):
        raise DataError(f"{args.data}: encoded with another tokenizer than the model's training data; "
                        f"encode it with --tokenizer-from {trained['data']}")
    model, config = load_model(os.path.join(args.model, "model.pt"))
    model.to(device())
    log(f"read {data_meta['n_instances']} encoded instances from {args.data} and the {trained['stage']} "
        f"model from {args.model}")

    batches = length_batches(arrays["lengths"], args.batch_size)

    begin_stage(args.out, stale=("probs.npy", "pred.npy"))  # a Siamese model writes neither
    feats, probs = represent(InPrecision(model.encoder, args.precision), arrays, log.progress(batches, "features"),
                             model.cluster_head)
    vote = trained.get("vote", {}) if probs is not None else {}
    if vote.get("steps"):
        n_train = trained["n_instances"]
        train_feats = load_npy(os.path.join(args.model, "features.npy"), n_train)
        train_probs = load_npy(os.path.join(args.model, "probs.npy"), n_train)
        nearest, _ = mine(feats, vote["neighbors"], among=train_feats)  # fewer than n_train, as mined there
        probs = knn_vote(probs, np.asarray(train_probs)[nearest])
        log(f"kNN vote: each instance's probabilities averaged with those of its {nearest.shape[1]} nearest "
            f"training instances ({args.model}/probs.npy)")
    save_npy(os.path.join(args.out, "features.npy"), feats)
    wrote = [f"features.npy {feats.shape}"]
    if probs is not None:
        save_npy(os.path.join(args.out, "probs.npy"), probs)
        save_npy(os.path.join(args.out, "pred.npy"), probs.argmax(1).astype(np.int32))
        wrote += ["probs.npy", "pred.npy"]
    save_json(os.path.join(args.out, "meta.json"),
              {"stage": "predict", "model_stage": trained["stage"], "model": os.path.abspath(args.model),
               "data": os.path.abspath(args.data), "data_fingerprint": data_meta["fingerprint"],
               "model_fingerprint": trained["fingerprint"], "n_instances": data_meta["n_instances"],
               "precision": args.precision,
               "fingerprint": fingerprint(trained["fingerprint"], data_meta["fingerprint"]),
               "seconds": round(log.elapsed(), 1)})
    log.done(f"{', '.join(wrote)} and meta.json to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
