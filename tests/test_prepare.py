"""data/prepare.py on local copies (the download is not exercised here: tests never reach the network)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import data

REPO = Path(__file__).resolve().parents[1]


def shared_file(name):
    for d in (os.environ.get("URE_SHARED_DATA"), REPO.parent / "shared" / "data"):
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    pytest.skip(f"{name} (../shared/data or $URE_SHARED_DATA) is not here")


def prepare(*args):
    return subprocess.run([sys.executable, "data/prepare.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_redocred_from_a_local_copy_gives_the_benchmark_file(tmp_path):
    """The sentence-level file that prepare.py writes is redocred_dev.json but for the relation names
    (prepare.py keeps the bare Wikidata ids): bench/quality.py splits and scores it alike."""
    source = shared_file("redocred_dev_revised.json")
    p = prepare("redocred", "--from", source, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "4820 instances from 500 documents" in p.stdout
    assert (tmp_path / "redocred_dev_revised.json").read_bytes() == source.read_bytes()
    ours = json.loads((tmp_path / "redocred_dev.json").read_text(encoding="utf-8"))
    ref = json.loads(shared_file("redocred_dev.json").read_text(encoding="utf-8"))
    assert len(ours) == len(ref) == 4820
    for a, b in zip(ours, ref):
        assert a["relation"] == b["relation"].split(":")[0]
        assert {k: v for k, v in a.items() if k != "relation"} == {k: v for k, v in b.items() if k != "relation"}
    assert len(data.read_instances(tmp_path / "redocred_dev.json")) == 4820


def test_fewrel_from_a_local_copy(tmp_path):
    source = shared_file("fewrel_val_wiki.json")
    p = prepare("fewrel", "--from", source, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "fewrel_val_wiki.json").read_bytes() == source.read_bytes()


def test_a_file_with_another_checksum_is_refused(tmp_path):
    """Checked before anything is written; the message gives both checksums, on one line."""
    bad = tmp_path / "dev_revised.json"
    bad.write_text('[{"title": "x", "sents": [["a"]], "vertexSet": [], "labels": []}]')
    out = tmp_path / "out"
    p = prepare("redocred", "--from", bad, "--out", out)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1
    got = hashlib.sha256(bad.read_bytes()).hexdigest()
    assert f"SHA-256 {got}, expected 051ee1d0" in p.stderr and str(bad) in p.stderr
    assert not out.exists()
    p = prepare("fewrel", "--from", tmp_path / "absent.json", "--out", out)
    assert p.returncode == 2 and "absent.json: cannot read" in p.stderr


def test_bench_defaults_to_shared_data_else_data_real(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("quality", REPO / "bench" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    shared = REPO.parent / "shared" / "data"
    assert quality.default_data_dir() == str(shared if shared.is_dir() else REPO / "data" / "real")
    p = subprocess.run([sys.executable, "bench/quality.py", "--data-dir", str(tmp_path), "--sets", "redocred"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "`python data/prepare.py redocred`" in p.stderr
