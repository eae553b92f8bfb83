"""Bad input, crashes and reruns: clear errors, nothing lost, repeatable runs.

1. The corpus tests/bad_inputs/: encode.py on each file exits with status 2 and one line on stderr,
   `error: FILE: record N (id ID): field ...`, never a traceback.
2. Run directories: every stage refuses the directory of another stage, an incomplete one, one whose
   files come from different runs (the fingerprints in meta.json), pickled arrays and models, and the
   common mistakes in its settings.  These run the stage's main() in this process (DataError is what
   its `__main__` turns into the one line of (1)), which saves starting an interpreter per case.
3. Killed and resumed: train_siamese.py and train_cluster.py killed with SIGKILL after their first
   checkpoint leave only complete files, and --resume ends with exactly the uninterrupted run's results.
4. Repeatable: the same commands with the same seed give identical pred.npy and metrics.json.
Stages that are compared run as subprocesses with one torch thread, like tests/test_pipeline.py.
"""
import ast
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import rundir
from data import DataError

REPO = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "bad_inputs"
SIAMESE = ["--epochs", "3", "--batch-size", "8", "--seed", "0"]
CLUSTER = ["--k", "4", "--epochs", "3", "--batch-size", "8", "--seed", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(*args, ok=True):
    """`python *args` in the repository root; with ok, require exit status 0."""
    p = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=ENV)
    if ok:
        assert p.returncode == 0, f"{args} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def one_error_line(p, *fragments):
    """The stage stopped with status 2 and exactly one line `error: ...` holding every fragment."""
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def in_process(script, *args):
    """A stage's main() with these arguments, in this process, on one thread (torch's global RNG and
    thread count left as they were)."""
    module = importlib.import_module(script)
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [script + ".py", *map(str, args)]
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            module.main()
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)


def refused(script, *args):
    """The message of the DataError that stops the stage."""
    with pytest.raises(DataError) as e:
        in_process(script, *args)
    return str(e.value)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load(d, name):
    return np.load(Path(d) / name, allow_pickle=False)


# ---- 1. the corpus of bad inputs -----------------------------------------------------------------

# file in tests/bad_inputs, extra arguments to encode.py, what its one line must say (and its file name)
CASES = [
    ("invalid_json.json", [], ["invalid JSON", "line 3"]),
    ("invalid_jsonl_in_the_middle.jsonl", [], ["line 2", "invalid JSON"]),
    ("empty.json", [], ["the file is empty"]),
    ("empty_list.json", [], ["no records"]),
    ("missing_field.json", [], ["record 1 (id r1)", "missing field 'subj_end'"]),
    ("missing_field_in_the_middle.jsonl", [], ["record 2 (id r2)", "missing field 'obj_start'"]),
    ("span_out_of_range.json", [], ["record 1 (id r1)", "field 'obj_end' = 7 is outside the 7 tokens"]),
    ("negative_span.json", [], ["record 0 (id r0)", "field 'subj_start' = -1 is outside"]),
    ("end_before_start.json", [], ["record 2 (id r2)", "field 'subj_end' = 0 is before 'subj_start' = 1"]),
    ("head_tail_overlap.json", [], ["record 1 (id r1)", "'subj_start'", "'obj_start'", "overlap"]),
    ("non_integer_span.json", [], ["record 1 (id r1)", "field 'obj_start' must be an integer"]),
    ("empty_token_list.json", [], ["record 1 (id r1)", "field 'token' must be a non-empty list"]),
    ("non_string_token.json", [], ["record 1 (id r1)", "field 'token': token 2 is int"]),
    ("bad_type_name.json", [], ["record 0 (id r0)", "field 'subj_type'", "not a usable type name"]),
    ("relation_not_a_string.json", [], ["record 2 (id r2)", "field 'relation' must be a string"]),
    ("record_not_an_object.jsonl", [], ["record 1", "expected an object"]),
    ("unknown_format.txt", [], ["unknown format"]),
    ("not_utf8.json", [], ["not UTF-8"]),
    ("fewrel_bad_entity.json", [], ["record 0 of relation 'P19'", "field 't'"]),
    ("fewrel_span_out_of_range.json", [], ["record 1 of relation 'P19'", "field 't' = 6 is outside"]),
    ("entities_beyond_max_length.json", ["--strict", "--max-length", "24"],
     ["record 1 (id far)", "head (tokens 0..1) and tail (tokens 40..40)", "--max-length 24"]),
]


def test_every_corpus_file_has_a_case():
    assert sorted(p.name for p in BAD.iterdir() if p.name != "README.md") == sorted(c[0] for c in CASES)
    readme = (BAD / "README.md").read_text(encoding="utf-8")
    assert all(f"`{c[0]}`" in readme for c in CASES)


@pytest.mark.parametrize("name,args,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, args, fragments, tiny_model, tmp_path):
    out = tmp_path / "out"
    p = run("encode.py", BAD / name, "--model", tiny_model, "--out", out, "--quiet", *args, ok=False)
    one_error_line(p, f"bad_inputs/{name}", *fragments)
    assert not out.exists()  # stopped before writing anything


def test_json_nested_too_deeply_is_one_line(tiny_model, tmp_path):
    """100,000 levels of '[' (json.loads raises RecursionError): the one-line error, no traceback."""
    for name, text in (("deep.json", "[" * 100_000), ("deep.jsonl", '{"a": ' + "[" * 100_000 + "\n")):
        path = tmp_path / name
        path.write_text(text)
        p = run("encode.py", path, "--model", tiny_model, "--out", tmp_path / "out", "--quiet", ok=False)
        one_error_line(p, name, "invalid JSON", "nested too deeply")


def test_skip_invalid_leaves_out_the_bad_record_of_10000(tiny_model, tmp_path):
    """A TACRED file of 10,000 records whose record 6,789 has head and tail overlapping: without
    --skip-invalid the one-line error; with it the record is left out, counted in meta.json and
    named in the log with the reason, and the summary line gives every count."""
    words = ["Ada", "Lovelace", "was", "born", "in", "London", "in", "1815", "."]
    records = [{"id": f"r{i}", "token": words[:5] + [f"w{i}"] + words[6:], "subj_start": 0, "subj_end": 1,
                "obj_start": 5, "obj_end": 5, "subj_type": "PERSON", "obj_type": "CITY", "relation": "born_in"}
               for i in range(10_000)]
    records[6789].update(obj_start=1, obj_end=2)
    records[42]["token"] = ["Ada"] + ["x"] * 200 + words[1:]   # too long for --max-length 64 after windowing
    records[42].update(subj_end=0, obj_start=206, obj_end=206)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "out"
    one_error_line(run("encode.py", path, "--model", tiny_model, "--out", out, "--quiet", ok=False),
                   "record 6789 (id r6789)", "head and tail overlap")
    p = run("encode.py", path, "--model", tiny_model, "--out", out, "--skip-invalid", "--max-length", "64",
            "--quiet")
    meta = read_json(out / "meta.json")
    assert (meta["n_records"], meta["n_invalid"], meta["n_skipped"], meta["n_instances"]) == (9999, 1, 1, 9998)
    assert "r6789" not in read_json(out / "ids.json") and "r6790" in read_json(out / "ids.json")
    assert "record 6789 (id r6789): fields 'subj_start'..'subj_end' and 'obj_start'..'obj_end': head and tail " \
           "overlap" in p.stdout
    assert "10000 records read from" in p.stdout
    assert "9998 encoded, 1 skipped for length (entities beyond --max-length 64), 1 skipped as invalid" in p.stdout


def test_entities_beyond_max_length_are_skipped_and_counted(tiny_model, tmp_path, capsys):
    """Without --strict the record that does not fit is left out, counted and named."""
    in_process("encode", BAD / "entities_beyond_max_length.json", "--model", tiny_model,
               "--out", tmp_path / "out", "--max-length", 24, "--quiet")
    meta = read_json(tmp_path / "out" / "meta.json")
    assert (meta["n_records"], meta["n_instances"], meta["n_skipped"]) == (2, 1, 1)
    log = capsys.readouterr().out
    assert "1 skipped" in log and "record 1 (id far)" in log


def test_model_that_does_not_exist(tiny_data, tmp_path):
    p = run("encode.py", tiny_data[1], "--model", "/nonexistent/model", "--out", tmp_path / "out", ok=False)
    one_error_line(p, "--model /nonexistent/model: no such model directory")


@pytest.mark.parametrize("args,fragment", [
    (["--model", BAD], "holds no config.json: not a saved model"),
    (["--model", "{model}", "--max-length", "4"], "--max-length 4: too short"),
    (["--model", "{model}", "--max-length", "1000"], "--max-length 1000: the model"),
    (["--model", "{model}", "--batch-size", "0", "--features"], "--batch-size 0: must be at least 1"),
    (["--model", "{model}", "--tokenizer-from", "{model}"], "--model and --tokenizer-from"),
    (["--tokenizer-from", "{model}"], "no meta.json"),
], ids=["not-a-model", "max-length-4", "max-length-1000", "batch-size-0", "model-and-tokenizer-from",
        "tokenizer-from-not-a-run"])
def test_encode_settings(args, fragment, tiny_model, tiny_data, tmp_path):
    args = [str(a).format(model=tiny_model) for a in args]
    assert fragment in refused("encode", tiny_data[1], "--out", tmp_path / "out", "--quiet", *args)
    assert not (tmp_path / "out").exists()


# ---- 2. run directories ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model, tiny_data):
    """The method once through: the reference for the tests below.  The stages whose results are
    compared run as subprocesses, like the runs they are compared with."""
    root = tmp_path_factory.mktemp("chain")
    c = SimpleNamespace(root=root, model=tiny_model, train_file=tiny_data[0], test_file=tiny_data[1],
                        **{d: root / d for d in ("train", "test", "siamese", "cluster", "test_cluster")})
    in_process("encode", c.train_file, "--out", c.train, "--model", tiny_model, "--quiet")
    in_process("encode", c.test_file, "--out", c.test, "--tokenizer-from", c.train, "--quiet")
    run("train_siamese.py", "--data", c.train, "--out", c.siamese, *SIAMESE, "--quiet")
    in_process("mine_neighbors", c.siamese, "--k", "5")
    run("train_cluster.py", "--data", c.train, "--init", c.siamese, "--out", c.cluster, *CLUSTER, "--quiet")
    run("predict.py", "--model", c.cluster, "--data", c.test, "--out", c.test_cluster, "--quiet")
    run("evaluate.py", c.test_cluster, "--k", "4", "--seed", "0", "--out", root / "metrics.json")
    return c


# script, arguments ({name} is a directory of the chain, {tmp} this test's own), what the message says
MISTAKES = [
    ("predict", "--model {train} --data {test} --out {tmp}/p",
     "{train}: not a directory of train_siamese.py or train_cluster.py (its meta.json says stage 'encode')"),
    ("train_siamese", "--data {siamese} --out {tmp}/s", "{siamese}: not a directory of encode.py"),
    ("encode", "{test_file} --tokenizer-from {siamese} --out {tmp}/e", "not a directory of encode.py"),
    ("mine_neighbors", "{tmp}", "{tmp}: no meta.json"),
    ("evaluate", "{train} --k 4", "{train}: holds neither pred.npy nor features.npy"),
    ("evaluate", "{test_cluster} --k 0", "K = 0"),
    ("mine_neighbors", "{siamese} --k 120", "K = 120 needs at least K + 1 instances, there are 120"),
    ("mine_neighbors", "{siamese} --k 5 --chunk 0", "--chunk 0"),
    ("train_cluster", "--data {train} --init {siamese} --out {tmp}/c --k 121", "K = 121 but there are 120"),
    ("train_siamese", "--data {train} --out {tmp}/s --epochs 0", "nothing to train"),
    ("train_siamese", "--data {train} --out {tmp}/s --batch-size 0", "--batch-size 0: must be at least 1"),
    ("predict", "--model {cluster} --data {test} --out {tmp}/p --batch-size -1", "--batch-size -1"),
    ("predict", "--model {cluster} --data {test} --out {test}", "is the --model or --data directory"),
]


@pytest.mark.parametrize("script,args,fragment", MISTAKES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MISTAKES)])
def test_stage_refuses_mistake(script, args, fragment, chain, tmp_path):
    names = {**vars(chain), "tmp": tmp_path}
    before = {d: sorted(os.listdir(getattr(chain, d))) for d in ("train", "test", "siamese", "cluster")}
    msg = refused(script, *args.format(**names).split())
    assert fragment.format(**names) in msg
    # a refused stage changed nothing it was given
    assert before == {d: sorted(os.listdir(getattr(chain, d))) for d in before}


def test_meta_json_incomplete_or_foreign(chain, tmp_path):
    d = tmp_path / "siamese"
    shutil.copytree(chain.siamese, d)
    meta = read_json(d / "meta.json")
    del meta["fingerprint"]
    rundir.save_json(str(d / "meta.json"), meta)
    assert f"{d}/meta.json: missing field 'fingerprint'" in refused("mine_neighbors", d)
    rundir.save_json(str(d / "meta.json"), [1, 2])
    assert "its meta.json says stage None" in refused("mine_neighbors", d)
    (d / "meta.json").write_bytes(b"\xff\xfe{")
    assert f"{d}/meta.json: cannot read" in refused("predict", "--model", d, "--data", chain.test,
                                                    "--out", tmp_path / "p")


def test_evaluate_needs_gold_labels(chain, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(chain.test, test)
    (test / "labels.npy").unlink()
    assert "no labels.npy" in refused("evaluate", test, "--k", 4)


def test_outputs_on_data_encoded_again_are_refused(chain, tmp_path):
    """predict.py's outputs on a test file, whose directory is then encoded again from other records
    (as many of them: only the fingerprints can tell): evaluate.py and mine_neighbors.py refuse them."""
    test, pred = tmp_path / "test", tmp_path / "pred"
    shutil.copytree(chain.test, test)
    in_process("predict", "--model", chain.cluster, "--data", test, "--out", pred, "--quiet")
    in_process("evaluate", pred, "--k", 4, "--out", tmp_path / "before.json")  # fine so far
    other = tmp_path / "other.json"
    other.write_text(json.dumps(read_json(chain.test_file)[::-1]), encoding="utf-8")
    in_process("encode", other, "--out", test, "--tokenizer-from", chain.train, "--quiet")
    assert read_json(test / "meta.json")["n_instances"] == read_json(pred / "meta.json")["n_instances"]
    msg = refused("evaluate", pred, "--k", 4, "--out", tmp_path / "after.json")
    assert f"{pred}: made from other data than {test} holds now" in msg
    assert "made from other data" in refused("mine_neighbors", pred, "--k", 3)
    assert not (tmp_path / "after.json").exists()


def test_model_of_data_encoded_again_is_refused(chain, tmp_path):
    train, siamese = tmp_path / "train", tmp_path / "siamese"
    shutil.copytree(chain.train, train)
    in_process("train_siamese", "--data", train, "--out", siamese, "--epochs", 1, "--batch-size", 16, "--quiet")
    other = tmp_path / "other.json"
    other.write_text(json.dumps(read_json(chain.train_file)[::-1]), encoding="utf-8")
    in_process("encode", other, "--out", train, "--model", chain.model, "--quiet")
    assert read_json(train / "meta.json")["markers"] == read_json(chain.train / "meta.json")["markers"]
    msg = refused("predict", "--model", siamese, "--data", chain.test, "--out", tmp_path / "p")
    assert f"{siamese}: made from other data than {train} holds now" in msg


def test_neighbours_of_other_features_are_refused(chain, tmp_path):
    """The Siamese stage run again with other settings after mining: its neighbors.npy is stale."""
    siamese = tmp_path / "siamese"
    shutil.copytree(chain.siamese, siamese)
    in_process("train_siamese", "--data", chain.train, "--out", siamese, "--epochs", 1, "--batch-size", 16,
               "--quiet")
    assert (siamese / "neighbors.npy").exists()
    msg = refused("train_cluster", "--data", chain.train, "--init", siamese, "--out", tmp_path / "c", *CLUSTER)
    assert "mined from other features" in msg


class Payload:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickled_array_is_refused(chain, tmp_path):
    siamese, ran = tmp_path / "siamese", tmp_path / "code_ran"
    shutil.copytree(chain.siamese, siamese)
    np.save(siamese / "features.npy", np.array([Payload(ran)] * 120, dtype=object), allow_pickle=True)
    msg = refused("mine_neighbors", siamese)
    assert f"{siamese}/features.npy: not a readable .npy array" in msg and "pickled objects are never loaded" in msg
    assert not ran.exists()


def test_pickled_model_and_checkpoint_are_refused(chain, tmp_path):
    cluster, ran = tmp_path / "cluster", tmp_path / "code_ran"
    shutil.copytree(chain.cluster, cluster)
    torch.save({"config": Payload(ran), "state": {}}, cluster / "model.pt")
    msg = refused("predict", "--model", cluster, "--data", chain.test, "--out", tmp_path / "p")
    assert f"{cluster}/model.pt: refused: it holds Python objects other than weights" in msg
    torch.save({"model": Payload(ran)}, cluster / "checkpoint.pt")
    msg = refused("train_cluster", "--data", chain.train, "--init", chain.siamese, "--out", cluster, *CLUSTER,
                  "--resume")
    assert f"{cluster}/checkpoint.pt: refused" in msg
    assert not ran.exists()


def loading_calls(source):
    """(line, call, its keyword arguments) of every torch.load and np.load call in `source`, however
    its arguments are laid out over lines."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "np", "numpy"):
            yield node.lineno, f"{node.func.value.id}.load", {k.arg: k.value for k in node.keywords}


def is_constant(node, value):
    return isinstance(node, ast.Constant) and node.value is value


def test_loading_audit_sees_a_call_split_across_lines():
    calls = list(loading_calls("x = torch.load(\n    path,\n    map_location='cpu')\ny = np.load(p, allow_pickle=False)\n"))
    assert [(line, call) for line, call, _ in calls] == [(1, "torch.load"), (4, "np.load")]
    assert "weights_only" not in calls[0][2] and is_constant(calls[1][2]["allow_pickle"], False)


def test_loading_is_safe_in_every_script():
    """The audit: every torch.load has weights_only=True, every np.load allow_pickle=False, nothing
    unpickles or runs a model's own code.  The calls are found in the syntax tree, not by line."""
    sources = sorted(REPO.glob("*.py")) + sorted(REPO.glob("bench/*.py"))
    assert {"training.py", "rundir.py"} <= {p.name for p in sources}
    found = 0
    for p in sources:
        text = p.read_text(encoding="utf-8")
        for line, call, keywords in loading_calls(text):
            found += 1
            needed = ("weights_only", True) if call == "torch.load" else ("allow_pickle", False)
            assert is_constant(keywords.get(needed[0]), needed[1]), f"{p.name}:{line}: {call} without {needed}"
        assert not re.search(r"pickle\.loads?\(|allow_pickle=True|weights_only=False|trust_remote_code=True",
                             text), p.name
    assert found >= 3  # training.safe_load, rundir.load_npy, bench/speed.py


def test_begin_stage_removes_what_a_killed_run_left(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    for name in ("meta.json", "pred.npy", "checkpoint.pt", ".features.npy.k2j4x9.tmp", ".hidden"):
        (out / name).write_bytes(b"x")
    (out / ".tokenizer.abc123.tmp").mkdir()
    rundir.begin_stage(str(out), stale=("pred.npy",))
    assert sorted(os.listdir(out)) == [".hidden", "checkpoint.pt"]


def test_atomic_write_temporary_name(tmp_path):
    seen = []
    rundir.atomic_write(str(tmp_path / "a.npy"), lambda f: seen.extend(os.listdir(tmp_path)))
    assert len(seen) == 1 and rundir.is_temporary(seen[0]) and seen[0].startswith(".a.npy.")
    assert os.listdir(tmp_path) == ["a.npy"]


# ---- 3. killed and resumed -------------------------------------------------------------------------


def check_complete(d):
    """Every file in `d` loads, safely: a killed stage leaves complete files (and perhaps temporaries)."""
    for p in d.iterdir():
        if p.suffix == ".npy":
            np.load(p, allow_pickle=False)
        elif p.suffix == ".json":
            read_json(p)
        elif p.suffix == ".pt":
            torch.load(p, map_location="cpu", weights_only=True)


def kill_after_first_checkpoint(args, out, log):
    """Start a training stage and SIGKILL it once its first checkpoint is in place; returns the epoch the
    checkpoint holds, checking that the stage had not finished."""
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=ENV, stdout=f,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").exists():
            assert p.poll() is None, f"ended before its first checkpoint:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (out / "meta.json").exists(), "the stage finished before it was killed"
    check_complete(out)
    epoch = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= epoch < 3
    # what a kill during a write leaves behind: the rerun must clear it
    (out / ".features.npy.a1b2c3d4.tmp").write_bytes(b"\x93NUMPY half")
    return epoch


def history(d):
    """The per-epoch losses in meta.json, without their timings."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in read_json(d / "meta.json")["history"]]


def check_resumed(out, epoch, resumed):
    assert f"resumed after epoch {epoch}" in resumed.stdout
    assert not [p.name for p in out.iterdir() if rundir.is_temporary(p.name)]
    check_complete(out)


def test_train_siamese_killed_mid_run_resumes_exactly(chain, tmp_path):
    out = tmp_path / "siamese"
    args = ["train_siamese.py", "--data", chain.train, "--out", out, *SIAMESE, "--quiet"]
    epoch = kill_after_first_checkpoint(args, out, tmp_path / "log")
    check_resumed(out, epoch, run(*args, "--resume"))
    assert np.array_equal(load(out, "features.npy"), load(chain.siamese, "features.npy"))
    assert history(out) == history(chain.siamese)
    assert read_json(out / "meta.json")["fingerprint"] == read_json(chain.siamese / "meta.json")["fingerprint"]


def test_train_cluster_killed_mid_run_resumes_exactly(chain, tmp_path):
    out = tmp_path / "cluster"
    args = ["train_cluster.py", "--data", chain.train, "--init", chain.siamese, "--out", out, *CLUSTER, "--quiet"]
    epoch = kill_after_first_checkpoint(args, out, tmp_path / "log")
    check_resumed(out, epoch, run(*args, "--resume"))
    for name in ("features.npy", "probs.npy", "pred.npy"):
        assert np.array_equal(load(out, name), load(chain.cluster, name)), name
    assert history(out) == history(chain.cluster)


# ---- 4. repeatable -------------------------------------------------------------------------------


def test_same_commands_same_results(chain, tmp_path):
    """predict.py and evaluate.py again, into another directory: the same pred.npy and metrics.json, to
    the byte.  (train_cluster.py again gives the same pred.npy: tests/test_pipeline.py; and so does
    train_cluster.py killed and resumed, above.)"""
    test_cluster = tmp_path / "test_cluster"
    run("predict.py", "--model", chain.cluster, "--data", chain.test, "--out", test_cluster, "--quiet")
    run("evaluate.py", test_cluster, "--k", "4", "--seed", "0", "--out", tmp_path / "metrics.json")
    assert (test_cluster / "pred.npy").read_bytes() == (chain.test_cluster / "pred.npy").read_bytes()
    assert (tmp_path / "metrics.json").read_bytes() == (chain.root / "metrics.json").read_bytes()
