"""Tests for rundir.py: atomic writes, safe loading of arrays and JSON, stage directories, fingerprints."""
import os

import numpy as np
import pytest

import rundir
from data import DataError
from rundir import atomic_write, load_json, load_npy, save_json, save_npy


def test_save_npy_roundtrip(tmp_path):
    path = str(tmp_path / "sub" / "a.npy")  # the directory is created
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    save_npy(path, a)
    b = load_npy(path, rows=4)
    assert b.dtype == np.float32 and np.array_equal(b, a)
    assert os.listdir(tmp_path / "sub") == ["a.npy"]


def test_atomic_write_error_keeps_previous_file(tmp_path):
    path = str(tmp_path / "a.npy")
    old = np.arange(5, dtype=np.int32)
    save_npy(path, old)

    def half_then_fail(f):
        f.write(b"\x93NUMPY partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert np.array_equal(np.load(path), old)
    assert os.listdir(tmp_path) == ["a.npy"]  # no temporary file left behind

    # a write that np.save refuses (object array without pickling) behaves the same
    with pytest.raises(ValueError):
        save_npy(path, np.array([{"a": 1}, None], dtype=object))
    assert np.array_equal(np.load(path), old)
    assert os.listdir(tmp_path) == ["a.npy"]


def test_atomic_write_keyboard_interrupt(tmp_path):
    path = str(tmp_path / "m.json")
    save_json(path, {"v": 1})

    def interrupted(f):
        f.write(b'{"v": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert load_json(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_load_npy_wrong_rows(tmp_path):
    path = str(tmp_path / "a.npy")
    save_npy(path, np.zeros((7, 2), np.float32))
    with pytest.raises(DataError) as e:
        load_npy(path, rows=8)
    assert "rows" in str(e.value) and "7" in str(e.value) and "8" in str(e.value) and path in str(e.value)


def test_load_npy_missing_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_npy(str(tmp_path / "none.npy"))
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"this is not npy")
    with pytest.raises(DataError, match="not a readable"):
        load_npy(str(bad))


def test_json_roundtrip_and_errors(tmp_path):
    path = str(tmp_path / "meta.json")
    obj = {"stage": "encode", "n": 3, "names": ["a", "b"]}
    save_json(path, obj)
    assert load_json(path) == obj
    with pytest.raises(DataError, match="not found"):
        load_json(str(tmp_path / "absent.json"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DataError, match="invalid JSON"):
        load_json(str(tmp_path / "bad.json"))


def test_begin_stage_removes_meta(tmp_path):
    out = tmp_path / "stage"
    rundir.begin_stage(str(out))
    assert out.is_dir()
    save_json(str(out / "meta.json"), {"stage": "x"})
    save_npy(str(out / "keep.npy"), np.zeros(2))
    rundir.begin_stage(str(out))
    assert sorted(os.listdir(out)) == ["keep.npy"]


def test_fingerprint_depends_on_content():
    assert rundir.fingerprint({"a": 1, "b": 2}) == rundir.fingerprint({"b": 2, "a": 1})
    assert rundir.fingerprint({"a": 1}) != rundir.fingerprint({"a": 2})
    assert len(rundir.fingerprint("x")) == 16
