"""Stage 1: read relation instances, inject entity-type markers, tokenize, and write arrays.

    python encode.py data/train.json --out runs/default/train --features
    python encode.py data/test.json  --out runs/default/test --tokenizer-from runs/default/train --features

Reads a TACRED JSON, JSON lines, FewRel or DocRED file (data.py) and a --model (a Hugging Face name or a
local directory; default: the packaged all-MiniLM-L6-v2).  The marker vocabulary (<h:TYPE>, </h:TYPE>,
<t:TYPE>, </t:TYPE> for every type in the data) is added to the tokenizer, which is saved with the run
so that every later stage, and every other file encoded with --tokenizer-from, uses the same ids.

A record that cannot be used stops the stage with one line naming the file, the record and the field
(data.read_instances), or with --skip-invalid is left out, counted (n_invalid) and named in the log;
one whose two entities do not fit in --max-length even after windowing is skipped and counted, or
stops the stage with --strict.  DocRED documents give one instance per labelled entity pair that
shares a sentence; the pairs left out are counted by reason in the log and in meta.json.

Writes into --out:
    tokenizer/                   the extended tokenizer
    input_ids.npy   int32 [N, T] [CLS] marked sentence [SEP], zero-padded to T = the longest
    lengths.npy     int32 [N]    tokens per instance (the attention mask is arange(T) < length)
    head_pos.npy    int32 [N]    position of the head start marker <h:...>
    tail_pos.npy    int32 [N]    position of the tail start marker <t:...>
    head_end.npy    int32 [N]    position of the head closing marker </h:...>
    tail_end.npy    int32 [N]    position of the tail closing marker </t:...>
    index.npy       int32 [N]    the record each instance comes from (records that do not fit are skipped)
    ids.json                     the records' ids
    type_pair.npy   int32 [N]    (head type, tail type) pair id, names in meta.json, when the data has types
    context_key.npy int32 [N]    relation-context group (data.context_key): instances with the same words
                                 between their entities share an id; -1 for an instance that shares it
                                 with none.  The training stages' --positives key reads it
    labels.npy      int32 [N]    gold relation id, names in label_names.json, when every record has one;
                                 read by evaluate.py only
    features.npy  float32 [N, D] with --features: the frozen encoder's r (--pooling; D = 4 x hidden size
                                 for sumdiff and both, 2 x for one), computed in --precision (bf16: under autocast)
    meta.json                    what was read and written; written last, so its presence means complete
"""
import argparse
import os
import shutil
import tempfile

import numpy as np

from data import (FORMATS, POOLINGS, DataError, context_groups, encode_instance, marker_vocabulary,
                  read_instances, read_relation_names)
from rundir import Log, begin_stage, fail, file_digest, fingerprint, load_meta, save_json, save_npy


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="TACRED JSON, JSON lines, FewRel JSON or DocRED JSON file")
    ap.add_argument("--out", help="run directory to write (default: runs/<data file name>)")
    ap.add_argument("--format", choices=FORMATS, help="input format (default: detected from the content)")
    ap.add_argument("--model", help="Hugging Face name or local path (default: packaged all-MiniLM-L6-v2)")
    ap.add_argument("--tokenizer-from", metavar="RUN",
                    help="reuse the model and marker vocabulary of another encoded run (for test or new data)")
    ap.add_argument("--pooling", choices=POOLINGS,
                    help="r = the states at the two start markers and the mean states of the two entity spans, "
                         "side by side (both, the default) or as head + tail and head - tail (sumdiff), or one kind")
    ap.add_argument("--max-length", type=int, default=128, help="subword tokens per instance, markers included")
    ap.add_argument("--strict", action="store_true",
                    help="fail on a record whose two entities do not fit in --max-length (default: skip it)")
    ap.add_argument("--skip-invalid", action="store_true",
                    help="leave out a record that fails validation, count it and name it in the log "
                         "(default: stop with an error)")
    ap.add_argument("--relation-names", metavar="FILE",
                    help="name relation ids by a pid2name.json-style file: P17 becomes P17:country")
    ap.add_argument("--features", action="store_true", help="also write the frozen encoder's features.npy")
    # training.add_precision's option, spelled out here so that a bad file is reported before torch loads
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="of the encoder's forward pass for --features: fp32, or bf16 autocast (README, \"Speed\")")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    log = Log("encode", args.quiet)
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.data))[0])
    if args.max_length < 8:
        raise DataError(f"--max-length {args.max_length}: too short for [CLS], four markers, two entities and [SEP]")
    if args.model and args.tokenizer_from:
        raise DataError(f"--model and --tokenizer-from: the model is the one {args.tokenizer_from} was encoded with")
    if args.pooling and args.tokenizer_from:
        raise DataError(f"--pooling and --tokenizer-from: the pooling is the one {args.tokenizer_from} was encoded with")
    if args.model:
        check_model_dir(args.model)

    names = read_relation_names(args.relation_names) if args.relation_names else None
    stats = {}
    instances = read_instances(args.data, args.format, args.skip_invalid, names, stats)
    invalid = stats["invalid"]
    if "left_out" in stats:
        left_out = ", ".join(f"{n} {why}" for why, n in stats["left_out"].items()) or "none"
        log(f"DocRED documents: {len(instances)} instances from labelled entity pairs; pairs left out: {left_out}")
    if invalid:
        log(f"skipped as invalid (--skip-invalid): {len(invalid)} records")
        for message in invalid[:20]:
            log(f"  {message}")
        if len(invalid) > 20:
            log(f"  ... and {len(invalid) - 20} more")

    # torch and transformers are imported once the data has been read, so a bad file is reported at once
    import torch
    from model import RelationEncoder
    from training import (InPrecision, build_encoder, check_precision, default_model, device, length_batches,
                          load_tokenizer, represent)

    # the marker vocabulary: new tokens of a fresh tokenizer, or the one of an earlier run
    if args.tokenizer_from:
        like = load_meta(args.tokenizer_from, ("encode",))
        model_name = like["model"]
        tokenizer = load_tokenizer(os.path.join(args.tokenizer_from, "tokenizer"))
        marker_list = like["markers"]
        pooling = like["pooling"]
    else:
        pooling = args.pooling or "both"
        model_name = args.model or default_model()
        tokenizer = load_tokenizer(model_name)
        marker_list = marker_vocabulary(instances)
        tokenizer.add_tokens(marker_list, special_tokens=True)
    positions = max_positions(model_name)
    if positions and args.max_length > positions:
        raise DataError(f"--max-length {args.max_length}: the model {model_name} reads at most {positions} tokens")
    marker_ids = dict(zip(marker_list, tokenizer.convert_tokens_to_ids(marker_list)))
    unknown = sorted({t for x in instances for t in (x.head_type, x.tail_type)
                      if t and f"<h:{t}>" not in marker_ids and f"<t:{t}>" not in marker_ids})
    if unknown:
        log(f"types not in the marker vocabulary of {args.tokenizer_from}, marked untyped: {unknown}")

    # tokenize every distinct word once, then assemble each marked sentence from its pieces
    words = sorted({w for x in instances for w in x.tokens})
    piece_ids = dict(zip(words, tokenizer(words, add_special_tokens=False)["input_ids"]))
    encoded, kept, skipped = [], [], []
    for i, x in enumerate(instances):
        e = encode_instance(x, piece_ids, marker_ids, tokenizer.cls_token_id, tokenizer.sep_token_id,
                            args.max_length)
        if e is None:
            if args.strict:
                raise DataError(f"{args.data}: record {i} (id {x.id}): its head (tokens {x.head[0]}..{x.head[1]}) "
                                f"and tail (tokens {x.tail[0]}..{x.tail[1]}) with their markers do not fit in "
                                f"--max-length {args.max_length} subword tokens")
            skipped.append(f"record {i} (id {x.id})")
            continue
        encoded.append(e)
        kept.append(i)
    if not encoded:
        raise DataError(f"{args.data}: no record fits in --max-length {args.max_length}")
    n, width = len(encoded), max(len(e[0]) for e in encoded)
    input_ids = np.full((n, width), tokenizer.pad_token_id, np.int32)
    for row, (ids, *_) in enumerate(encoded):
        input_ids[row, :len(ids)] = ids
    arrays = {"input_ids": input_ids,
              "lengths": np.array([len(e[0]) for e in encoded], np.int32),
              "head_pos": np.array([e[1] for e in encoded], np.int32),
              "tail_pos": np.array([e[2] for e in encoded], np.int32),
              "head_end": np.array([e[3] for e in encoded], np.int32),
              "tail_end": np.array([e[4] for e in encoded], np.int32),
              "index": np.array(kept, np.int32)}
    kept_instances = [instances[i] for i in kept]
    log(f"{len(instances) + len(invalid)} records read from {args.data}: {n} encoded, {len(skipped)} skipped for "
        f"length (entities beyond --max-length {args.max_length}), {len(invalid)} skipped as invalid; "
        f"mean length {arrays['lengths'].mean():.1f} tokens, {len(marker_list)} markers")
    if skipped:
        log(f"skipped (--strict makes it an error): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")

    batches = length_batches(arrays["lengths"], args.batch_size)  # checks --batch-size before anything is written

    # everything below is written into a directory whose meta.json is removed first and written last
    begin_stage(out, stale=("features.npy", "labels.npy", "label_names.json", "type_pair.npy"))
    meta = {"stage": "encode", "source": os.path.abspath(args.data), "source_digest": file_digest(args.data),
            "format": args.format, "skip_invalid": args.skip_invalid,
            "relation_names": os.path.abspath(args.relation_names) if args.relation_names else None,
            "model": model_name, "max_length": args.max_length,
            "n_records": len(instances), "n_instances": n, "n_skipped": len(instances) - n, "n_invalid": len(invalid),
            "markers": marker_list, "pooling": pooling, "width": width}
    if "left_out" in stats:
        meta["docred_pairs_left_out"] = stats["left_out"]
    meta["fingerprint"] = fingerprint(meta)
    save_tokenizer(tokenizer, os.path.join(out, "tokenizer"))
    for name, a in arrays.items():
        save_npy(os.path.join(out, name + ".npy"), a)
    save_json(os.path.join(out, "ids.json"), [x.id for x in kept_instances])
    groups = np.array(context_groups(kept_instances), np.int32)
    save_npy(os.path.join(out, "context_key.npy"), groups)
    meta["context_covered"] = round(float((groups >= 0).mean()), 4)
    wrote = list(arrays) + ["ids", "context_key", "tokenizer"]
    log(f"relation context: {meta['context_covered']:.1%} of the instances share their key with another "
        f"({groups.max() + 1} groups)")

    if any(x.head_type or x.tail_type for x in kept_instances):
        pairs = [f"{x.head_type}-{x.tail_type}" for x in kept_instances]
        meta["type_pairs"], inverse = np.unique(pairs, return_inverse=True)
        meta["type_pairs"] = meta["type_pairs"].tolist()
        save_npy(os.path.join(out, "type_pair.npy"), inverse.astype(np.int32))
        wrote.append("type_pair")
    relations = [x.relation for x in kept_instances]
    if all(r is not None for r in relations):
        names, inverse = np.unique(relations, return_inverse=True)
        save_npy(os.path.join(out, "labels.npy"), inverse.astype(np.int32))
        save_json(os.path.join(out, "label_names.json"), names.tolist())
        wrote.append("labels")
    elif any(r is not None for r in relations):
        log("some records have a relation and some not: no labels.npy written")

    if args.features:
        torch.manual_seed(0)
        check_precision(args.precision, log)
        encoder = RelationEncoder(build_encoder(model_name, tokenizer, dropout=0.1), pooling).to(device())
        feats, _ = represent(InPrecision(encoder, args.precision), arrays, log.progress(batches, "features"))
        save_npy(os.path.join(out, "features.npy"), feats)
        meta["precision"] = args.precision
        wrote.append(f"features {feats.shape}")
        log(f"frozen features of {n} instances ({args.precision})")
    meta["seconds"] = round(log.elapsed(), 1)
    save_json(os.path.join(out, "meta.json"), meta)
    log.done(f"{', '.join(wrote)} and meta.json to {out}")


def check_model_dir(name):
    """A --model meant as a local directory (not a hub name such as bert-base-uncased or org/name) must
    hold a saved model: said here in one line, rather than by the hub client."""
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise DataError(f"--model {name}: the directory holds no config.json: not a saved model")
    elif os.path.exists(name) or os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1:
        raise DataError(f"--model {name}: no such model directory")


def max_positions(name):
    """The longest input the model reads (BERT: 512 tokens); None where its config does not say."""
    from transformers import AutoConfig
    try:
        return getattr(AutoConfig.from_pretrained(name), "max_position_embeddings", None)
    except (OSError, ValueError):
        return None  # the tokenizer has loaded: build_encoder reports what is wrong with the model


def save_tokenizer(tokenizer, path):
    """save_pretrained into a temporary directory, then swap it into place."""
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tokenizer.", suffix=".tmp")
    tokenizer.save_pretrained(tmp)
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        fail(e)
