"""The run directory: how the stages exchange files on disk.

Stages exchange .npy arrays and small JSON files; every file is written to a temporary name
(.NAME.*.tmp) and renamed into place, so an interrupted stage leaves the previous complete file or
none, never half of one; the stage's next run removes such leftovers.  meta.json is removed when a
stage starts and written as its last act, and it holds a fingerprint of what the stage read: a stage
that reads another's directory checks the fingerprints (`check_source`), so files from different runs
are never mixed.  Arrays load with allow_pickle=False and weights with weights_only=True
(training.safe_load): nothing in a data file can run code.  `Log` and `fail` are how every stage
reports what it read and wrote, and how it stops on bad input.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from data import DataError


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


def data_dir(d):
    """(the encoded data directory behind run directory `d`, d's meta.json): d itself for encode.py's
    directory, else the data directory its meta.json names."""
    meta = load_meta(d)
    return (d if meta["stage"] == "encode" else meta["data"]), meta


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
    if os.path.exists(os.path.join(d, "context_key.npy")):
        arrays["context_key"] = load_npy(os.path.join(d, "context_key.npy"), n)
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
