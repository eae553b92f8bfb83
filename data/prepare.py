"""Fetch the public sets that the README's real-data results use, check them, and write what
bench/quality.py reads.

    python data/prepare.py redocred                  # download (needs the internet)
    python data/prepare.py redocred --from dev_revised.json
    python data/prepare.py fewrel --from val_wiki.json
    python bench/quality.py --data-dir data/real     # the default where ../shared/data is absent

Sets (both MIT):
    redocred  Re-DocRED dev documents (Tan et al., EMNLP 2022), github.com/tonytan48/Re-DocRED
              data/dev_revised.json.  Written: redocred_dev_revised.json (the documents, as fetched) and
              redocred_dev.json, the sentence-level instances in TACRED JSON that data.py's DocRED
              reader makes of them (4,820; relations as bare Wikidata ids, P17).
    fewrel    FewRel 1.0 validation set (Han et al., EMNLP 2018), github.com/thunlp/FewRel
              data/val_wiki.json.  Written: fewrel_val_wiki.json, as fetched.
A file is accepted only if its SHA-256 is the one below, that of the file the README's figures were
measured on; every file is written to a temporary name and renamed into place.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data import DataError, docred_records, read_instances  # noqa: E402

SETS = {
    "redocred": ("https://raw.githubusercontent.com/tonytan48/Re-DocRED/main/data/dev_revised.json",
                 "051ee1d057204a5d08ef5502beacdadf191245b5eaf0e29ec2c607cf002c016f", "redocred_dev_revised.json"),
    "fewrel": ("https://raw.githubusercontent.com/thunlp/FewRel/master/data/val_wiki.json",
               "76bb44c2485b6faed358a3ce040eadafcc8a8835245cd7e6afc1bef672d4a0bf", "fewrel_val_wiki.json"),
}


def fetch(url, source):
    """The bytes of `source` (a local copy) or, without one, of `url`."""
    if source:
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as e:
            raise DataError(f"{source}: cannot read: {e.strerror}") from None
    print(f"[prepare] downloading {url}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.read()
    except OSError as e:
        raise DataError(f"{url}: cannot download ({e}); download it by hand and pass --from FILE") from None


def write(path, content):
    """`content` (bytes) to `path` through a temporary file beside it."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def prepare(name, source, out):
    url, sha256, file_name = SETS[name]
    content = fetch(url, source)
    got = hashlib.sha256(content).hexdigest()
    if got != sha256:
        raise DataError(f"{source or url}: SHA-256 {got}, expected {sha256}: not the {name} file the README's "
                        f"figures were measured on (another version, or damaged)")
    path = os.path.join(out, file_name)
    write(path, content)
    wrote = [path]
    if name == "redocred":
        documents = json.loads(content)
        left_out, records = {}, []
        for d, doc in enumerate(documents):
            records += docred_records(path, d, doc, left_out)
        sentences = os.path.join(out, "redocred_dev.json")
        write(sentences, json.dumps(records, ensure_ascii=False).encode("utf-8"))
        n = len(read_instances(sentences))  # checked as every stage will read it
        wrote.append(f"{sentences} ({n} instances from {len(documents)} documents; pairs left out: "
                     + ", ".join(f"{k} {why}" for why, k in left_out.items()) + ")")
    print("[prepare] wrote " + "; ".join(wrote), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("set", choices=list(SETS))
    ap.add_argument("--from", dest="source", metavar="FILE",
                    help="a local copy of the set's file (default: download it)")
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "real"), help="directory to write (default: data/real)")
    args = ap.parse_args()
    prepare(args.set, args.source, args.out)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
