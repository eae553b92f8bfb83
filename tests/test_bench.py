"""bench/quality.py's own parts, without a model: the 80 / 20 split and the markdown table."""
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("quality", REPO / "bench" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_split_tacred_list_is_a_seeded_80_20_partition(tmp_path):
    records = [{"id": str(i), "relation": f"r{i % 3}"} for i in range(50)]
    src = tmp_path / "all.json"
    src.write_text(json.dumps(records))
    train, test = quality.split(src, tmp_path, seed=0)
    a, b = json.loads(Path(train).read_text()), json.loads(Path(test).read_text())
    assert (len(a), len(b)) == (40, 10)
    assert sorted(a + b, key=lambda r: int(r["id"])) == records           # disjoint and complete
    assert [int(r["id"]) for r in a] == sorted(int(r["id"]) for r in a)   # file order kept
    again = tmp_path / "again"
    again.mkdir()
    assert json.loads(Path(quality.split(src, again, seed=0)[1]).read_text()) == b
    other = tmp_path / "other"
    other.mkdir()
    assert json.loads(Path(quality.split(src, other, seed=1)[1]).read_text()) != b


def test_split_fewrel_object_stays_a_fewrel_object(tmp_path):
    raw = {f"P{r}": [{"tokens": [f"w{r}_{i}"], "h": ["a", "Q1", [[0]]], "t": ["b", "Q2", [[0]]]} for i in range(10)]
           for r in range(3)}
    src = tmp_path / "fewrel.json"
    src.write_text(json.dumps(raw))
    train, test = (json.loads(Path(p).read_text()) for p in quality.split(src, tmp_path, seed=0))
    assert isinstance(train, dict) and isinstance(test, dict)
    assert sum(map(len, train.values())) == 24 and sum(map(len, test.values())) == 6
    for r, xs in raw.items():
        assert sorted(train.get(r, []) + test.get(r, []), key=lambda x: x["tokens"]) == xs


def test_markdown_has_one_row_per_clustering_and_the_times():
    row = {m: 0.5 for m in quality.METRICS}
    results = {"redocred": {"data": "redocred_dev.json", "pooling": "both", "times": {"encode": 1.5},
                            "table": {10: [dict(row, name="clustering head (the method)"),
                                           dict(row, name="k-means, frozen encoder", b3_f1=0.123)]}}}
    args = SimpleNamespace(seed=0, siamese_epochs=2, cluster_epochs=1, max_length=64, precision="bf16")
    md = quality.markdown(results, args)
    assert md.startswith("Held-out 20 % (seed 0)") and "max length 64, bf16; percent." in md.splitlines()[0]
    assert "**redocred_dev.json, K = 10** (pooling: both)" in md
    assert "| clustering head (the method) | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |" in md
    assert "| k-means, frozen encoder | 50.0 | 50.0 | 12.3 |" in md
    assert "Wall time per stage (s): encode 1.5" in md


def test_k_auto_adds_a_run_at_the_estimated_k(tmp_path, monkeypatch):
    """--k-auto: a third train_cluster.py run with --k auto, scored at the K it estimated (read from its
    meta.json), beside K = 10 and the gold K; the stages are stubbed (no model)."""
    src = tmp_path / "redocred_dev.json"
    src.write_text(json.dumps([{"relation": "r", "token": ["a"]}] * 10))
    calls = []

    def run(cmd, times, label):
        calls.append(cmd)
        if cmd[0] == "train_cluster.py":
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True)
            k = cmd[cmd.index("--k") + 1]
            (out / "meta.json").write_text(json.dumps({"k": 20 if k == "auto" else int(k)}))
        if cmd[0] == "encode.py":
            Path(cmd[cmd.index("--out") + 1]).mkdir(parents=True, exist_ok=True)
            (Path(cmd[cmd.index("--out") + 1]) / "meta.json").write_text(json.dumps({"pooling": "both"}))

    def evaluate(dirs, k, out, times, k_scan=False, lda_from=None):
        return [] if k_scan else [{"name": f"at {k}"}]

    monkeypatch.setattr(quality, "run", run)
    monkeypatch.setattr(quality, "evaluate", evaluate)
    for k_auto, keys in ((False, [10, 91]), (True, [10, 91, "auto (20)"])):
        args = SimpleNamespace(data_dir=str(tmp_path), out=str(tmp_path / f"out_{k_auto}"), seed=0, max_length=64,
                               precision="fp32", siamese_epochs=2, cluster_epochs=1, k_auto=k_auto)
        calls.clear()
        r = quality.bench_set("redocred", args)
        assert list(r["table"]) == keys and r["table"].get("auto (20)", [{"name": "at auto"}]) == [{"name": "at auto"}]
        ks = [c[c.index("--k") + 1] for c in calls if c[0] == "train_cluster.py"]
        assert ks == ["10", "91"] + (["auto"] if k_auto else [])
