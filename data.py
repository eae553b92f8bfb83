"""Relation instances: reading them, marking their entities, and the run directory on disk.

Every stage imports from here, so that a file is read, checked and written in exactly one way.

1. Readers.  Three formats, detected from the content (or named with --format):
     tacred  a JSON list of {token, subj_start, subj_end, obj_start, obj_end, subj_type, obj_type,
             relation?, id?}; spans are inclusive token indices.
     jsonl   the same objects, one per line.
     fewrel  {relation: [{tokens, h: [name, id, [[token indices], ...]], t: [...]}, ...]}; no entity
             types; the first mention of each entity is used.
   Each record becomes an `Instance`.  A record that cannot be used stops the stage with a `DataError`
   naming the file, the record (index and id) and the field.

2. Marker injection (paper section 3.1).  The entity types are injected as new marker tokens around
   the head and the tail:  <h:PERSON> Obama </h:PERSON> was born in <t:CITY> Honolulu </t:CITY> .
   Data without types gets untyped markers <h> </h> <t> </t>.  The instance is later represented by the
   encoder's hidden states at the two *start* markers and the mean states of the two entities' own
   subwords, so `encode_instance` returns the positions of the start and of the closing markers.
   A sentence longer than --max-length is cut to a window centred on the two entities.

3. The run directory.  Stages exchange .npy arrays and small JSON files; every file is written to a
   temporary name (.NAME.*.tmp) and renamed into place, so an interrupted stage leaves the previous
   complete file or none, never half of one; the stage's next run removes such leftovers.  meta.json
   is removed when a stage starts and written as its last act, and it holds a fingerprint of what the
   stage read: a stage that reads another's directory checks the fingerprints (`check_source`), so
   files from different runs are never mixed.  Arrays load with allow_pickle=False and weights with
   weights_only=True (model.py): nothing in a data file can run code.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

FORMATS = ("tacred", "jsonl", "fewrel")


class DataError(ValueError):
    """Bad input: the message names the file, the record and the field."""


@dataclass
class Instance:
    id: str
    tokens: list          # words
    head: tuple           # (start, end), inclusive token indices
    tail: tuple
    head_type: str | None
    tail_type: str | None
    relation: str | None  # gold label: read by evaluation only


# ----------------------------------------------------------------------------------------------
# 1. Readers


def detect_format(text):
    """'tacred' for a JSON list, 'fewrel' for a JSON object of lists, 'jsonl' for one object a line."""
    head = text.lstrip()[:1]
    if head == "[":
        return "tacred"
    if head == "{":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return "jsonl"  # several objects, one per line
        # one JSONL record on one line, or a FewRel object of lists
        return "fewrel" if obj and all(isinstance(v, list) for v in obj.values()) else "jsonl"
    return None


def read_instances(path, fmt=None):
    """Read and check every record of `path`; returns a list of Instance."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is tolerated
            text = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    fmt = fmt or detect_format(text)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format (expected a JSON list, JSON lines or a FewRel "
                        f"object; or name one with --format {'/'.join(FORMATS)})")
    if fmt == "jsonl":
        records = []
        for line_no, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {line_no}: invalid JSON: {e.msg}") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if fmt == "fewrel":
        if not isinstance(records, dict):
            raise DataError(f"{path}: FewRel data must be an object {{relation: [instances]}}")
        out = []
        for relation, items in records.items():
            if not isinstance(items, list):
                raise DataError(f"{path}: relation {relation!r}: expected a list of instances")
            for r in items:
                out.append(_fewrel_instance(path, len(out), r, relation))
    else:
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of records")
        out = [_tacred_instance(path, i, r) for i, r in enumerate(records)]
    if not out:
        raise DataError(f"{path}: no records")
    return out


def _where(path, i, record):
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{path}: record {i}" + (f" (id {rid})" if rid is not None else "")


def _check_tokens(where, tokens, field):
    if not isinstance(tokens, list) or not tokens:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of strings")
    for j, t in enumerate(tokens):
        if not isinstance(t, str):
            raise DataError(f"{where}: field '{field}': token {j} is {type(t).__name__}, not a string")


def _check_spans(where, n, head, tail, names):
    for (s, e), (fs, fe) in zip((head, tail), names):
        for v, f in ((s, fs), (e, fe)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise DataError(f"{where}: field '{f}' must be an integer, got {v!r}")
            if not 0 <= v < n:
                raise DataError(f"{where}: field '{f}' = {v} is outside the {n} tokens")
        if e < s:
            raise DataError(f"{where}: field '{fe}' = {e} is before '{fs}' = {s}")
    if head[0] <= tail[1] and tail[0] <= head[1]:
        raise DataError(f"{where}: fields '{names[0][0]}'..'{names[0][1]}' and "
                        f"'{names[1][0]}'..'{names[1][1]}': head and tail overlap")


def _tacred_instance(path, i, r):
    where = _where(path, i, r)
    if not isinstance(r, dict):
        raise DataError(f"{where}: expected an object, got {type(r).__name__}")
    for field in ("token", "subj_start", "subj_end", "obj_start", "obj_end"):
        if field not in r:
            raise DataError(f"{where}: missing field '{field}'")
    _check_tokens(where, r["token"], "token")
    head, tail = (r["subj_start"], r["subj_end"]), (r["obj_start"], r["obj_end"])
    _check_spans(where, len(r["token"]), head, tail,
                 (("subj_start", "subj_end"), ("obj_start", "obj_end")))
    types = []
    for field in ("subj_type", "obj_type"):
        t = r.get(field)
        if t is not None and (not isinstance(t, str) or not t.strip() or any(c in t for c in "<>/ ")):
            raise DataError(f"{where}: field '{field}' = {t!r} is not a usable type name")
        types.append(t)
    rel = r.get("relation")
    if rel is not None and not isinstance(rel, str):
        raise DataError(f"{where}: field 'relation' must be a string")
    return Instance(str(r.get("id", i)), r["token"], head, tail, types[0], types[1], rel)


def _fewrel_instance(path, i, r, relation):
    where = _where(path, i, r) + f" of relation {relation!r}"
    if not isinstance(r, dict):
        raise DataError(f"{where}: expected an object, got {type(r).__name__}")
    for field in ("tokens", "h", "t"):
        if field not in r:
            raise DataError(f"{where}: missing field '{field}'")
    _check_tokens(where, r["tokens"], "tokens")
    spans = []
    for field in ("h", "t"):
        e = r[field]
        try:
            mention = e[2][0]
            spans.append((min(mention), max(mention)))
        except (TypeError, IndexError, KeyError, ValueError):
            raise DataError(f"{where}: field '{field}' must be [name, id, [[token indices], ...]]") from None
    _check_spans(where, len(r["tokens"]), spans[0], spans[1], (("h", "h"), ("t", "t")))
    return Instance(str(r.get("id", i)), r["tokens"], spans[0], spans[1], None, None, relation)


# ----------------------------------------------------------------------------------------------
# 2. Marker injection


# how the encoder turns the marked sentence into r (model.RelationEncoder): the start markers' states,
# the entity spans' mean states, or both
POOLINGS = ("both", "markers", "spans")


def markers(head_type, tail_type):
    """The four marker tokens of one instance: (<h:T>, </h:T>, <t:T>, </t:T>), untyped without types."""
    h = f":{head_type}" if head_type else ""
    t = f":{tail_type}" if tail_type else ""
    return f"<h{h}>", f"</h{h}>", f"<t{t}>", f"</t{t}>"


def marker_vocabulary(instances):
    """Every marker the data needs, plus the untyped four (used for a type the tokenizer lacks)."""
    vocab = set(markers(None, None))
    for x in instances:
        vocab.update(markers(x.head_type, x.tail_type))
    return sorted(vocab)


def mark(x, known=None):
    """The words of `x` with the markers inserted, and the indices of the head and tail start markers.

    A type whose marker is not in `known` (a tokenizer made on other data) falls back to untyped
    markers for that entity."""
    h_open, h_close, t_open, t_close = markers(x.head_type, x.tail_type)
    if known is not None:
        if h_open not in known:
            h_open, h_close = "<h>", "</h>"
        if t_open not in known:
            t_open, t_close = "<t>", "</t>"
    words, head_at, tail_at = [], None, None
    for i, w in enumerate(x.tokens):
        if i == x.head[0]:
            head_at = len(words)
            words.append(h_open)
        if i == x.tail[0]:
            tail_at = len(words)
            words.append(t_open)
        words.append(w)
        if i == x.head[1]:
            words.append(h_close)
        if i == x.tail[1]:
            words.append(t_close)
    return words, head_at, tail_at


def encode_instance(x, piece_ids, marker_ids, cls_id, sep_id, max_length):
    """Subword ids [CLS] ... [SEP] with markers, and the positions of the two start markers and of the
    two closing markers (an entity's own subwords lie strictly between its two markers).

    `piece_ids` maps a word to its subword ids, `marker_ids` a marker to its id.  When the marked
    sentence is longer than `max_length`, a window centred on the two entities is kept; returns None
    when the two marked entities alone do not fit."""
    words, head_at, tail_at = mark(x, marker_ids)
    ids, starts = [], []
    for w in words:
        starts.append(len(ids))
        ids.extend([marker_ids[w]] if w in marker_ids else piece_ids[w])
    head, tail = starts[head_at], starts[tail_at]
    # the closing markers: one word after each entity's last word
    head_end = starts[head_at + (x.head[1] - x.head[0]) + 2]
    tail_end = starts[tail_at + (x.tail[1] - x.tail[0]) + 2]
    budget = max_length - 2
    lo, hi = min(head, tail), max(head_end, tail_end)
    if hi - lo + 1 > budget:
        return None
    start = 0
    if len(ids) > budget:
        start = max(0, min(lo - (budget - (hi - lo + 1)) // 2, len(ids) - budget))
    ids = ids[start:start + budget]
    return [cls_id] + ids + [sep_id], head - start + 1, tail - start + 1, head_end - start + 1, tail_end - start + 1


# ----------------------------------------------------------------------------------------------
# 3. The run directory


def atomic_write(path, write):
    """Call write(f) on a temporary file beside `path`, .NAME.*.tmp, then rename it into place."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):  # disk full, permissions
            raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
        raise


def is_temporary(name):
    """A leftover of atomic_write (or of encode.py's tokenizer directory) that a killed stage left behind."""
    return name.startswith(".") and name.endswith(".tmp")


def remove_temporaries(d):
    for name in os.listdir(d):
        if is_temporary(name):
            path = os.path.join(d, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def save_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode() + b"\n"))


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: not found (did the stage that writes it run?)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def load_npy(path, rows=None):
    """A memory-mapped array; `rows` checks its first dimension."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: not found (did the stage that writes it run?)") from None
    except (ValueError, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy array of numbers: {e} "
                        f"(pickled objects are never loaded)") from None
    if rows is not None and (a.ndim == 0 or a.shape[0] != rows):
        raise DataError(f"{path}: has {a.shape[0] if a.ndim else 0} rows but its data has {rows} instances "
                        f"(files from different runs?)")
    return a


def fingerprint(*parts):
    """A short hash of what a stage's output depends on; stored in meta.json, checked downstream."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# what each stage's meta.json must hold for the stages that read it
STAGES = {"encode": ("encode.py", ("n_instances", "fingerprint", "model", "markers")),
          "siamese": ("train_siamese.py", ("data", "data_fingerprint", "n_instances", "fingerprint")),
          "cluster": ("train_cluster.py", ("data", "data_fingerprint", "n_instances", "fingerprint")),
          "predict": ("predict.py", ("data", "data_fingerprint", "n_instances", "fingerprint", "model_stage"))}


def load_meta(d, stages=tuple(STAGES)):
    """meta.json of directory `d`, checked: complete, written by one of `stages`, with its fields."""
    path = os.path.join(d, "meta.json")
    if not os.path.exists(path):
        raise DataError(f"{d}: no meta.json: not a run directory, or the stage that writes it did not "
                        f"finish (run it again)")
    meta = load_json(path)
    stage = meta.get("stage") if isinstance(meta, dict) else None
    if stage not in stages:
        raise DataError(f"{d}: not a directory of {' or '.join(STAGES[s][0] for s in stages)} "
                        f"(its meta.json says stage {stage!r})")
    for field in STAGES[stage][1]:
        if field not in meta:
            raise DataError(f"{path}: missing field '{field}' (written by another version? run "
                            f"{STAGES[stage][0]} again)")
    return meta


def check_source(meta, source_meta, d):
    """Stop when directory `d` (its meta.json `meta`) was made from other data than its data directory
    holds now: the data was encoded again since, and `d` is out of date."""
    if meta["data_fingerprint"] != source_meta["fingerprint"]:
        raise DataError(f"{d}: made from other data than {meta['data']} holds now (fingerprints differ: "
                        f"it was encoded again since); run the stages after encode.py again")


def load_encoded(d):
    """The arrays that encode.py wrote in directory `d`, memory-mapped, with its meta.json."""
    meta = load_meta(d, ("encode",))
    n = meta["n_instances"]
    arrays = {name: load_npy(os.path.join(d, name + ".npy"), n)
              for name in ("input_ids", "lengths", "head_pos", "tail_pos", "head_end", "tail_end")}
    return arrays, meta


def begin_stage(out, stale=()):
    """Create the stage's directory and remove its meta.json: until the stage writes it again as its
    last act, the directory reads as incomplete to every later stage.  Also removed: the temporary
    files of a killed run, and the `stale` files, outputs of an earlier run that this one may not
    write again."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the directory: {e.strerror}") from None
    for name in ("meta.json", *stale):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    remove_temporaries(out)


def length_batches(lengths, batch_size, rng=None):
    """Index batches.  Without `rng` (inference): sorted by length, so that little of each batch is
    padding.  With it (training): a random permutation, because SimSiam's BatchNorm statistics and
    SCAN's entropy of the mean prediction both assume that a batch is a random sample of the data."""
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: must be at least 1")
    order = rng.permutation(len(lengths)) if rng is not None else np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class Log:
    """Prints what a stage read and wrote, and how long it took; draws progress bars unless quiet."""

    def __init__(self, stage, quiet=False):
        self.stage, self.t0, self.quiet = stage, time.time(), quiet

    def progress(self, iterable, desc):
        """A progress bar with rate and ETA over `iterable` (tqdm, which transformers brings)."""
        from tqdm import tqdm
        return tqdm(iterable, desc=f"[{self.stage}] {desc}", disable=self.quiet, leave=False,
                    dynamic_ncols=True, mininterval=1.0)

    def elapsed(self):
        return time.time() - self.t0

    def __call__(self, *msg):
        print(f"[{self.stage} {self.elapsed():7.1f}s]", *msg, flush=True)

    def done(self, wrote):
        self(f"wrote {wrote} in {self.elapsed():.1f}s")


def fail(e):
    """Stop a stage with one clear line, not a traceback."""
    print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)
    sys.exit(2)
