"""DocRED / Re-DocRED documents as input (data.docred_records, read_instances' 'docred' format).

A handmade document checks each rule; the real Re-DocRED dev documents beside the project, when they
are there, must give exactly the sentence-level instances of ../shared/data/redocred_dev.json.
"""
import json
import os
from pathlib import Path

import pytest

import data
from data import DataError, read_instances

SENTS = [["Ada", "Byron", "was", "born", "in", "London", "in", "1815", "."],           # 0
         ["She", "worked", "with", "Charles", "Babbage", "in", "London", "."],         # 1
         ["Babbage", "founded", "the", "Analytical", "Society", "."],                 # 2
         ["The", "Analytical", "Society", "met", "in", "Cambridge", "."]]             # 3
ENTITIES = [
    [{"name": "Ada Byron", "pos": [0, 2], "sent_id": 0, "type": "PER"}],                                  # 0
    [{"name": "London", "pos": [5, 6], "sent_id": 0, "type": "LOC"},
     {"name": "London", "pos": [6, 7], "sent_id": 1, "type": "LOC"}],                                     # 1
    [{"name": "1815", "pos": [7, 8], "sent_id": 0, "type": "TIME"}],                                      # 2
    [{"name": "Babbage", "pos": [0, 1], "sent_id": 2, "type": "PER"},
     {"name": "Charles Babbage", "pos": [3, 5], "sent_id": 1, "type": "PER"}],                            # 3
    [{"name": "Analytical Society", "pos": [3, 5], "sent_id": 2, "type": "ORG"},
     {"name": "Analytical Society", "pos": [1, 3], "sent_id": 3, "type": "ORG"}],                         # 4
    [{"name": "Cambridge", "pos": [5, 6], "sent_id": 3, "type": "LOC"}],                                  # 5
    [{"name": "Byron", "pos": [1, 2], "sent_id": 0, "type": "PER"}],                                      # 6: inside entity 0
]
LABELS = [
    {"h": 0, "t": 1, "r": "P19", "evidence": [0]},        # evidence sentence 0 holds both
    {"h": 0, "t": 2, "r": "P569", "evidence": []},        # no evidence listed: the first sentence with both
    {"h": 3, "t": 4, "r": "P112", "evidence": [3, 2]},    # evidence in sentence order: 2 (3 lacks the head)
    {"h": 4, "t": 5, "r": "P159", "evidence": [3]},
    {"h": 4, "t": 5, "r": "P131", "evidence": [3]},       # a second relation for (4, 5): pair left out
    {"h": 0, "t": 3, "r": "P1327", "evidence": []},       # no evidence, and no sentence holds both
    {"h": 3, "t": 1, "r": "P551", "evidence": [2]},       # evidence sentence 2 lacks London
    {"h": 0, "t": 6, "r": "P1449", "evidence": [0]},      # the mentions overlap
]
DOC = {"title": "Ada Lovelace", "sents": SENTS, "vertexSet": ENTITIES, "labels": LABELS}


def write(tmp_path, docs, name="docs.json"):
    p = tmp_path / name
    p.write_text(json.dumps(docs), encoding="utf-8")
    return p


def test_each_rule_on_a_handmade_document(tmp_path):
    stats = {}
    xs = read_instances(write(tmp_path, [DOC]), stats=stats)
    assert [(x.id, x.relation, x.head, x.tail, x.head_type, x.tail_type) for x in xs] == [
        ("0-0-1-0", "P19", (0, 1), (5, 5), "PERSON", "LOCATION"),
        ("0-0-2-0", "P569", (0, 1), (7, 7), "PERSON", "DATE"),
        ("0-3-4-2", "P112", (0, 0), (3, 4), "PERSON", "ORGANIZATION"),   # the mention in sentence 2
    ]
    assert xs[2].tokens == SENTS[2]
    assert stats["left_out"] == {"more than one relation": 1, "no evidence sentence holds a mention of both": 1,
                                 "no sentence holds a mention of both": 1, "the two mentions overlap": 1}
    assert stats["invalid"] == []


def test_detected_from_the_content_and_named_with_format(tmp_path):
    p = write(tmp_path, [DOC])
    assert read_instances(p) == read_instances(p, fmt="docred")
    with pytest.raises(DataError, match="record 0: missing field 'token'"):
        read_instances(p, fmt="tacred")   # named otherwise, read otherwise


def test_the_first_mention_in_the_sentence_and_the_second_document(tmp_path):
    doc = json.loads(json.dumps(DOC))
    doc["vertexSet"][1].insert(0, {"name": "London", "pos": [6, 7], "sent_id": 1, "type": "LOC"})
    doc["labels"] = [{"h": 3, "t": 1, "r": "P551", "evidence": [1]}]
    xs = read_instances(write(tmp_path, [DOC, doc]))
    assert xs[-1].id == "1-3-1-1" and (xs[-1].head, xs[-1].tail) == ((3, 4), (6, 6))


def test_relation_names_from_pid2name_or_rel_info(tmp_path):
    pid2name = tmp_path / "pid2name.json"
    pid2name.write_text(json.dumps({"P19": ["place of birth", "the most specific known place"]}))
    rel_info = tmp_path / "rel_info.json"
    rel_info.write_text(json.dumps({"P19": "place of birth", "P569": "date of birth"}))
    p = write(tmp_path, [DOC])
    assert [x.relation for x in read_instances(p, relation_names=data.read_relation_names(pid2name))] == [
        "P19:place of birth", "P569", "P112"]   # an id the file does not name stays as it is
    assert [x.relation for x in read_instances(p, relation_names=data.read_relation_names(rel_info))][:2] == [
        "P19:place of birth", "P569:date of birth"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"P19": 3}))
    with pytest.raises(DataError, match="relation 'P19': expected a name"):
        data.read_relation_names(bad)


@pytest.mark.parametrize("change,fragment", [
    (lambda d: d.pop("sents"), "missing field 'sents'"),
    (lambda d: d["sents"].__setitem__(1, []), "field 'sents[1]' must be a non-empty list"),
    (lambda d: d["vertexSet"][1][1].__setitem__("sent_id", 9), "field 'vertexSet[1][1].sent_id' = 9 is outside"),
    (lambda d: d["vertexSet"][2][0].__setitem__("pos", [7, 12]), "field 'vertexSet[2][0].pos' = [7, 12]"),
    (lambda d: d["vertexSet"][0][0].pop("type"), "field 'vertexSet[0][0]' must be"),
    (lambda d: d["labels"][2].__setitem__("t", 40), "field 'labels[2].t' = 40 is not an entity"),
    (lambda d: d["labels"][0].__setitem__("evidence", "0"), "field 'labels[0].evidence'"),
])
def test_a_bad_document_names_document_and_field(tmp_path, change, fragment):
    doc = json.loads(json.dumps(DOC))
    change(doc)
    p = write(tmp_path, [DOC, doc])
    with pytest.raises(DataError) as e:
        read_instances(p)
    assert fragment in str(e.value) and str(p) in str(e.value)
    assert "document 1 (Ada Lovelace)" in str(e.value)
    stats = {}
    xs = read_instances(p, skip_invalid=True, stats=stats)   # the whole document skipped
    assert [x.id for x in xs] == ["0-0-1-0", "0-0-2-0", "0-3-4-2"]
    assert len(stats["invalid"]) == 1 and fragment in stats["invalid"][0]


def test_an_unusable_type_names_the_instance(tmp_path):
    doc = json.loads(json.dumps(DOC))
    doc["vertexSet"][2][0]["type"] = "T I M E"
    p = write(tmp_path, [doc])
    with pytest.raises(DataError, match=r"record 1 \(id 0-0-2-0\): field 'obj_type' = 'T I M E'"):
        read_instances(p)
    assert [x.id for x in read_instances(p, skip_invalid=True)] == ["0-0-1-0", "0-3-4-2"]


# ---- the real Re-DocRED dev documents (skipped when ../shared/data is absent) ---------------------------


def shared_file(name):
    for d in (os.environ.get("URE_SHARED_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    pytest.skip(f"{name} (../shared/data or $URE_SHARED_DATA) is not here")


def test_redocred_documents_give_the_sentence_level_set():
    """redocred_dev_revised.json read directly gives redocred_dev.json: the same 4,820 instances in the
    same order, tokens, spans, types and relation ids alike.  The one difference is in relation names:
    redocred_dev.json names the ids as DocRED's rel_info.json does, and pid2name.json (FewRel's list)
    lacks 8 of them (dates: P569, P570, P571, P576, P577, P580, P582, P585) and names 3 otherwise."""
    documents = shared_file("redocred_dev_revised.json")
    sentences = shared_file("redocred_dev.json")
    names = data.read_relation_names(shared_file("pid2name.json"))
    stats = {}
    ours = read_instances(documents, relation_names=names, stats=stats)
    ref = read_instances(sentences)
    assert len(ours) == len(ref) == 4820
    assert stats["left_out"] == {"more than one relation": 3651, "no sentence holds a mention of both": 3175,
                                 "no evidence sentence holds a mention of both": 1713, "the two mentions overlap": 3}
    key = lambda x: (x.id, x.tokens, x.head, x.tail, x.head_type, x.tail_type, x.relation.split(":")[0])
    assert [key(x) for x in ours] == [key(x) for x in ref]
    renamed = {(a.relation, b.relation) for a, b in zip(ours, ref) if a.relation != b.relation}
    assert {a for a, _ in renamed if ":" not in a} == {"P569", "P570", "P571", "P576", "P577", "P580", "P582", "P585"}
    assert {(a, b) for a, b in renamed if ":" in a} == {
        ("P179:part of the series", "P179:series"), ("P190:twinned administrative body", "P190:sister city"),
        ("P364:original language of film or TV show", "P364:original language of work")}
    assert all(b.startswith(a + ":") for a, b in renamed if ":" not in a)


def test_encode_reads_documents_and_reports_the_pairs_left_out(tiny_model, tmp_path):
    import subprocess
    import sys
    names = tmp_path / "pid2name.json"
    names.write_text(json.dumps({"P19": ["place of birth", "..."]}))
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "encode.py", str(write(tmp_path, [DOC])), "--out", str(out), "--model",
                        str(tiny_model), "--relation-names", str(names), "--quiet"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert ("pairs left out: 1 more than one relation, 1 no sentence holds a mention of both, "
            "1 no evidence sentence holds a mention of both, 1 the two mentions overlap") in p.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_instances"] == 3 and sum(meta["docred_pairs_left_out"].values()) == 4
    assert json.loads((out / "label_names.json").read_text()) == ["P112", "P19:place of birth", "P569"]
    assert json.loads((out / "ids.json").read_text()) == ["0-0-1-0", "0-0-2-0", "0-3-4-2"]
