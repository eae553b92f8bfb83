"""Tests for data.py: readers and their errors, marker injection, encoding with truncation."""
import json
import zlib

import numpy as np
import pytest

import data
from data import DataError, Instance, encode_instance, mark, marker_vocabulary, markers, read_instances


# ---- helpers ------------------------------------------------------------------------------------

def tacred(tokens, subj, obj, subj_type="PERSON", obj_type="CITY", relation="born_in", id=None):
    r = {"token": tokens, "subj_start": subj[0], "subj_end": subj[1], "obj_start": obj[0], "obj_end": obj[1],
         "subj_type": subj_type, "obj_type": obj_type, "relation": relation}
    if id is not None:
        r["id"] = id
    return r


OBAMA = tacred(["Barack", "Obama", "was", "born", "in", "Honolulu", "."], (0, 1), (5, 5), id="r0")
LOVELACE = tacred(["London", "is", "where", "Ada", "Lovelace", "was", "born"], (3, 4), (0, 0), id="r1")
UNTYPED = tacred(["Paris", "hosts", "the", "Louvre"], (3, 3), (0, 0), None, None, None)  # no id, no relation


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def err(tmp_path, records, name="bad.json"):
    """The DataError message for a JSON list of `records`."""
    path = write(tmp_path, name, json.dumps(records))
    with pytest.raises(DataError) as e:
        read_instances(path)
    return path, str(e.value)


def inst(tokens, head, tail, head_type="PERSON", tail_type="CITY"):
    return Instance("x", list(tokens), tuple(head), tuple(tail), head_type, tail_type, None)


class FakePieces:
    """word -> 1 to 3 subword ids, deterministic from the word; all ids >= 1000."""

    def __getitem__(self, w):
        c = zlib.crc32(w.encode())
        return [1000 + 3 * (c % 100000) + j for j in range(1 + c % 3)]


PIECES = FakePieces()
MARKER_IDS = {m: i for i, m in enumerate(
    ["<h>", "</h>", "<t>", "</t>", "<h:PERSON>", "</h:PERSON>", "<t:CITY>", "</t:CITY>",
     "<h:CITY>", "</h:CITY>", "<t:PERSON>", "</t:PERSON>"], start=10)}
CLS, SEP = 1, 2


def ids_of(words):
    out = []
    for w in words:
        out.extend([MARKER_IDS[w]] if w in MARKER_IDS else PIECES[w])
    return out


# ---- 1. readers ----------------------------------------------------------------------------------

def check_tacred_instances(xs):
    assert len(xs) == 3
    a, b, c = xs
    assert (a.id, a.tokens, a.head, a.tail, a.head_type, a.tail_type, a.relation) == (
        "r0", OBAMA["token"], (0, 1), (5, 5), "PERSON", "CITY", "born_in")
    assert (b.id, b.head, b.tail) == ("r1", (3, 4), (0, 0))
    # no id: the record index; no types: None
    assert (c.id, c.head, c.tail, c.head_type, c.tail_type, c.relation) == ("2", (3, 3), (0, 0), None, None, None)


def test_read_tacred_json_list(tmp_path):
    path = write(tmp_path, "d.json", json.dumps([OBAMA, LOVELACE, UNTYPED], indent=2))
    assert data.detect_format(open(path).read()) == "tacred"
    check_tacred_instances(read_instances(path))


def test_read_jsonl(tmp_path):
    text = "\n".join(json.dumps(r) for r in [OBAMA, LOVELACE, UNTYPED]) + "\n\n"  # a trailing blank line
    path = write(tmp_path, "d.jsonl", text)
    assert data.detect_format(text) == "jsonl"
    check_tacred_instances(read_instances(path))


def test_read_jsonl_single_line(tmp_path):
    path = write(tmp_path, "one.jsonl", json.dumps(OBAMA) + "\n")
    xs = read_instances(path)
    assert len(xs) == 1 and xs[0].head == (0, 1) and xs[0].tail == (5, 5)


def test_read_fewrel(tmp_path):
    obj = {
        "P19": [
            {"tokens": ["Barack", "Obama", "was", "born", "in", "Honolulu", ",", "Obama", "said"],
             "h": ["barack obama", "Q76", [[0, 1], [7]]],       # first mention only
             "t": ["honolulu", "Q18094", [[5]]]},
            {"tokens": ["In", "Ulm", "Albert", "Einstein", "Hermann", "was", "born"],
             "h": ["albert einstein", "Q937", [[4, 3, 2]]],      # min..max of the first mention
             "t": ["ulm", "Q3012", [[1]]], "id": "fr-7"},
        ],
        "P17": [
            {"tokens": ["Lyon", "is", "in", "France"], "h": ["lyon", "Q456", [[0]]],
             "t": ["france", "Q142", [[3]]]},
        ],
    }
    path = write(tmp_path, "fewrel.json", json.dumps(obj))
    assert data.detect_format(open(path).read()) == "fewrel"
    xs = read_instances(path)
    assert [(x.relation, x.head, x.tail) for x in xs] == [("P19", (0, 1), (5, 5)), ("P19", (2, 4), (1, 1)),
                                                          ("P17", (0, 0), (3, 3))]
    assert all(x.head_type is None and x.tail_type is None for x in xs)
    assert [x.id for x in xs] == ["0", "fr-7", "2"]
    assert xs[2].tokens == ["Lyon", "is", "in", "France"]
    # untyped data -> untyped markers
    assert mark(xs[2])[0] == ["<h>", "Lyon", "</h>", "is", "in", "<t>", "France", "</t>"]


@pytest.mark.parametrize("ch", ["\u2028", "\u0085"])
def test_jsonl_line_separator_inside_a_token(tmp_path, ch):
    rec = tacred(["He", "said" + ch + "so", "to", "Ann"], (0, 0), (3, 3), id="ls")
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in [rec, OBAMA]) + "\n")
    xs = read_instances(path)
    assert len(xs) == 2 and xs[0].tokens[1] == "said" + ch + "so"
    # the same records as a JSON list are read fine
    assert read_instances(write(tmp_path, "d.json", json.dumps([rec, OBAMA], ensure_ascii=False))) == xs


def test_format_override(tmp_path):
    # a one-line JSON lines file whose record lacks 'token' is still read as JSON lines, detected or named,
    # and the reader reports the record's missing field
    rec = {k: v for k, v in OBAMA.items() if k != "token"}
    path = write(tmp_path, "one.jsonl", json.dumps(rec) + "\n")
    for fmt in (None, "jsonl"):
        with pytest.raises(DataError) as e:
            read_instances(path, fmt=fmt)
        assert "missing field 'token'" in str(e.value) and "record 0" in str(e.value)
    # a TACRED list read as FewRel is refused
    path = write(tmp_path, "d.json", json.dumps([OBAMA]))
    with pytest.raises(DataError, match="FewRel"):
        read_instances(path, fmt="fewrel")
    # the right name gives the same result as detection
    assert read_instances(path, fmt="tacred") == read_instances(path)


# ---- 1b. reader errors ---------------------------------------------------------------------------

def test_invalid_json(tmp_path):
    path = write(tmp_path, "broken.json", '[{"token": ["a", "b"], "subj_start": 0,,}]')
    with pytest.raises(ValueError) as e:
        read_instances(path)
    assert isinstance(e.value, DataError)
    assert path in str(e.value) and "invalid JSON" in str(e.value)


def test_invalid_jsonl_line_in_the_middle(tmp_path):
    lines = [json.dumps(OBAMA), '{"token": ["a"], "subj_start": 0', json.dumps(LOVELACE)]
    path = write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        read_instances(path)
    msg = str(e.value)
    assert path in msg and "line 2" in msg and "invalid JSON" in msg


@pytest.mark.parametrize("text", ["", "   \n\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, "empty.json", text)
    with pytest.raises(DataError) as e:
        read_instances(path)
    assert path in str(e.value) and "empty" in str(e.value)


def test_empty_list(tmp_path):
    path = write(tmp_path, "none.json", "[]")
    with pytest.raises(DataError, match="no records"):
        read_instances(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_instances(str(tmp_path / "absent.json"))


def test_missing_field(tmp_path):
    bad = {k: v for k, v in tacred(["a", "b", "c"], (0, 0), (2, 2), id="b").items() if k != "subj_end"}
    path, msg = err(tmp_path, [OBAMA, bad])
    assert path in msg and "record 1" in msg and "id b" in msg and "'subj_end'" in msg and "missing" in msg


def test_missing_field_without_id_names_index(tmp_path):
    bad = {k: v for k, v in UNTYPED.items() if k != "obj_start"}
    path, msg = err(tmp_path, [OBAMA, LOVELACE, bad])
    assert "record 2" in msg and "'obj_start'" in msg and "(id" not in msg


def test_span_out_of_range(tmp_path):
    path, msg = err(tmp_path, [OBAMA, tacred(["a", "b", "c"], (0, 0), (2, 3), id="oor")])
    assert path in msg and "record 1" in msg and "oor" in msg and "'obj_end'" in msg and "3" in msg


def test_negative_span(tmp_path):
    _, msg = err(tmp_path, [tacred(["a", "b", "c"], (-1, 0), (2, 2))])
    assert "record 0" in msg and "'subj_start'" in msg


def test_end_before_start(tmp_path):
    _, msg = err(tmp_path, [OBAMA, LOVELACE, tacred(["a", "b", "c", "d"], (2, 1), (3, 3), id="eb")])
    assert "record 2" in msg and "eb" in msg and "'subj_end'" in msg and "before" in msg


@pytest.mark.parametrize("head,tail", [((1, 2), (2, 3)), ((0, 4), (2, 2)), ((2, 2), (2, 2)), ((3, 4), (0, 3))])
def test_overlapping_head_and_tail(tmp_path, head, tail):
    _, msg = err(tmp_path, [tacred(["a", "b", "c", "d", "e"], head, tail, id="ov")])
    assert "record 0" in msg and "ov" in msg and "overlap" in msg
    assert "subj_start" in msg and "obj_start" in msg


def test_non_integer_span(tmp_path):
    _, msg = err(tmp_path, [tacred(["a", "b", "c"], (0, 0), (True, 2))])
    assert "'obj_start'" in msg and "integer" in msg
    _, msg = err(tmp_path, [tacred(["a", "b", "c"], (0, 1.0), (2, 2))])
    assert "'subj_end'" in msg and "integer" in msg


def test_empty_token_list(tmp_path):
    _, msg = err(tmp_path, [OBAMA, tacred([], (0, 0), (1, 1), id="e")])
    assert "record 1" in msg and "'token'" in msg and "non-empty" in msg


def test_non_string_token(tmp_path):
    _, msg = err(tmp_path, [tacred(["a", 7, "c"], (0, 0), (2, 2), id="ns")])
    assert "record 0" in msg and "ns" in msg and "'token'" in msg and "token 1" in msg and "int" in msg


def test_bad_type_name(tmp_path):
    _, msg = err(tmp_path, [tacred(["a", "b", "c"], (0, 0), (2, 2), subj_type="PER SON")])
    assert "'subj_type'" in msg


def test_record_not_an_object(tmp_path):
    _, msg = err(tmp_path, [OBAMA, ["not", "a", "record"]])
    assert "record 1" in msg and "list" in msg


def test_jsonl_bad_record_names_its_index(tmp_path):
    bad = tacred(["a", "b"], (0, 0), (1, 5), id="j3")
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in [OBAMA, LOVELACE, bad]))
    with pytest.raises(DataError) as e:
        read_instances(path)
    assert "record 2" in str(e.value) and "j3" in str(e.value) and "'obj_end'" in str(e.value)


def test_fewrel_bad_entity_field(tmp_path):
    obj = {"P1": [{"tokens": ["a", "b", "c"], "h": ["a", "Q1", [[0]]], "t": ["c", "Q2", []]}]}
    path = write(tmp_path, "f.json", json.dumps(obj))
    with pytest.raises(DataError) as e:
        read_instances(path)
    msg = str(e.value)
    assert path in msg and "record 0" in msg and "'t'" in msg and "P1" in msg


def test_fewrel_span_out_of_range(tmp_path):
    obj = {"P1": [{"tokens": ["a", "b", "c"], "h": ["a", "Q1", [[0]]], "t": ["c", "Q2", [[2]]]}],
           "P2": [{"tokens": ["a", "b"], "h": ["a", "Q1", [[0]]], "t": ["c", "Q2", [[1, 2]]]}]}
    path = write(tmp_path, "f.json", json.dumps(obj))
    with pytest.raises(DataError) as e:
        read_instances(path)
    msg = str(e.value)
    assert "record 1" in msg and "'t'" in msg and "P2" in msg


@pytest.mark.parametrize("text", ["hello world", "<xml/>", "42"])
def test_unknown_format_detected(tmp_path, text):
    path = write(tmp_path, "d.txt", text)
    with pytest.raises(DataError) as e:
        read_instances(path)
    assert path in str(e.value) and "unknown format" in str(e.value)


def test_unknown_format_named(tmp_path):
    path = write(tmp_path, "d.json", json.dumps([OBAMA]))
    with pytest.raises(DataError, match="unknown format"):
        read_instances(path, fmt="xml")


# ---- 2. marker injection -------------------------------------------------------------------------

def test_markers_and_vocabulary():
    assert markers("PERSON", "CITY") == ("<h:PERSON>", "</h:PERSON>", "<t:CITY>", "</t:CITY>")
    assert markers(None, None) == ("<h>", "</h>", "<t>", "</t>")
    assert markers("ORG", None) == ("<h:ORG>", "</h:ORG>", "<t>", "</t>")
    xs = [inst("ab", (0, 0), (1, 1), "PERSON", "CITY"), inst("ab", (0, 0), (1, 1), "CITY", "PERSON"),
          inst("ab", (0, 0), (1, 1), "PERSON", "CITY"), inst("ab", (0, 0), (1, 1), None, None)]
    v = marker_vocabulary(xs)
    assert v == sorted(v) and len(v) == len(set(v))
    assert set(v) == {"<h>", "</h>", "<t>", "</t>", "<h:PERSON>", "</h:PERSON>", "<t:CITY>", "</t:CITY>",
                      "<h:CITY>", "</h:CITY>", "<t:PERSON>", "</t:PERSON>"}
    # the untyped four are always there, even for fully typed data
    assert {"<h>", "</h>", "<t>", "</t>"} <= set(marker_vocabulary(xs[:1]))


def test_mark_head_before_tail():
    x = inst(["Barack", "Obama", "was", "born", "in", "Honolulu", "."], (0, 1), (5, 5))
    words, h, t = mark(x)
    assert words == ["<h:PERSON>", "Barack", "Obama", "</h:PERSON>", "was", "born", "in",
                     "<t:CITY>", "Honolulu", "</t:CITY>", "."]
    assert (h, t) == (0, 7)


def test_mark_tail_before_head():
    x = inst(["London", "is", "where", "Ada", "Lovelace", "was", "born"], (3, 4), (0, 0))
    words, h, t = mark(x)
    assert words == ["<t:CITY>", "London", "</t:CITY>", "is", "where", "<h:PERSON>", "Ada", "Lovelace",
                     "</h:PERSON>", "was", "born"]
    assert (h, t) == (5, 0)


def test_mark_adjacent_head_then_tail():
    x = inst(["a", "b", "c", "d", "e"], (1, 1), (2, 3), None, None)
    words, h, t = mark(x)
    assert words == ["a", "<h>", "b", "</h>", "<t>", "c", "d", "</t>", "e"]
    assert (h, t) == (1, 4)


def test_mark_adjacent_tail_then_head():
    x = inst(["a", "b", "c", "d", "e"], (2, 4), (0, 1), None, None)
    words, h, t = mark(x)
    assert words == ["<t>", "a", "b", "</t>", "<h>", "c", "d", "e", "</h>"]
    assert (h, t) == (4, 0)


def test_mark_whole_sentence_two_words():
    x = inst(["Obama", "Honolulu"], (0, 0), (1, 1))
    words, h, t = mark(x)
    assert words == ["<h:PERSON>", "Obama", "</h:PERSON>", "<t:CITY>", "Honolulu", "</t:CITY>"]
    assert (words[h], words[t]) == ("<h:PERSON>", "<t:CITY>")


def test_mark_unknown_type_falls_back_per_entity():
    known = set(marker_vocabulary([inst("ab", (0, 0), (1, 1), "PERSON", "CITY")]))
    words, h, t = mark(inst(["Acme", "hired", "Bob"], (0, 0), (2, 2), "ORG", "PERSON"), known)
    assert words == ["<h>", "Acme", "</h>", "hired", "<t>", "Bob", "</t>"]
    words, _, _ = mark(inst(["Bob", "left", "Oslo"], (0, 0), (2, 2), "PERSON", "TOWN"), known)
    assert words == ["<h:PERSON>", "Bob", "</h:PERSON>", "left", "<t>", "Oslo", "</t>"]
    # without a known set every type gets its own marker
    words, _, _ = mark(inst(["Bob", "left", "Oslo"], (0, 0), (2, 2), "PERSON", "TOWN"))
    assert words[4] == "<t:TOWN>" and words[6] == "</t:TOWN>"


def test_mark_keeps_the_words():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(100):
        n = int(rng.integers(2, 15))
        v = sorted(int(i) for i in rng.choice(n, 4, replace=True))
        if v[1] == v[2]:
            continue
        s1, s2 = (v[0], v[1]), (v[2], v[3])
        head, tail = (s1, s2) if rng.random() < 0.5 else (s2, s1)
        tokens = [f"w{i}" for i in range(n)]
        words, h, t = mark(inst(tokens, head, tail))
        assert len(words) == n + 4
        assert [w for w in words if not w.startswith("<")] == tokens
        assert words[h] == "<h:PERSON>" and words[t] == "<t:CITY>"
        assert words[h + 1:h + 3 + head[1] - head[0]] == tokens[head[0]:head[1] + 1] + ["</h:PERSON>"]
        assert words[t + 1:t + 3 + tail[1] - tail[0]] == tokens[tail[0]:tail[1] + 1] + ["</t:CITY>"]
        checked += 1
    assert checked > 50


# ---- 2b. encode_instance -------------------------------------------------------------------------

def test_encode_short_sentence_exact():
    x = inst(["Barack", "Obama", "was", "born", "in", "Honolulu", "."], (0, 1), (5, 5))
    ids, h, t, he, te = encode_instance(x, PIECES, MARKER_IDS, CLS, SEP, 128)
    marked = ["<h:PERSON>", "Barack", "Obama", "</h:PERSON>", "was", "born", "in", "<t:CITY>", "Honolulu",
              "</t:CITY>", "."]
    assert ids == [CLS] + ids_of(marked) + [SEP]
    assert ids[h] == MARKER_IDS["<h:PERSON>"] and ids[t] == MARKER_IDS["<t:CITY>"]
    assert h == 1 and t == 1 + len(ids_of(marked[:7]))
    assert ids[he] == MARKER_IDS["</h:PERSON>"] and ids[te] == MARKER_IDS["</t:CITY>"]
    assert ids[h + 1:he] == ids_of(["Barack", "Obama"]) and ids[t + 1:te] == ids_of(["Honolulu"])


def test_encode_tail_first_and_untyped():
    x = inst(["London", "is", "where", "Ada", "Lovelace", "was", "born"], (3, 4), (0, 0), None, None)
    ids, h, t, he, te = encode_instance(x, PIECES, MARKER_IDS, CLS, SEP, 64)
    marked = ["<t>", "London", "</t>", "is", "where", "<h>", "Ada", "Lovelace", "</h>", "was", "born"]
    assert ids == [CLS] + ids_of(marked) + [SEP]
    assert t == 1 and ids[h] == MARKER_IDS["<h>"] and h == 1 + len(ids_of(marked[:5]))


@pytest.mark.parametrize("head,tail", [((1, 2), (3, 3)), ((3, 3), (1, 2)), ((0, 0), (1, 4)), ((1, 4), (0, 0))])
def test_encode_adjacent_spans(head, tail):
    tokens = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    x = inst(tokens, head, tail)
    ids, h, t, he, te = encode_instance(x, PIECES, MARKER_IDS, CLS, SEP, 128)
    words, wh, wt = mark(x)
    assert ids == [CLS] + ids_of(words) + [SEP]
    assert ids[h] == MARKER_IDS["<h:PERSON>"] and ids[t] == MARKER_IDS["<t:CITY>"]
    assert h == 1 + len(ids_of(words[:wh])) and t == 1 + len(ids_of(words[:wt]))
    assert ids[he] == MARKER_IDS["</h:PERSON>"] and ids[te] == MARKER_IDS["</t:CITY>"]
    assert ids[h + 1:he] == ids_of(tokens[head[0]:head[1] + 1]) and ids[t + 1:te] == ids_of(tokens[tail[0]:tail[1] + 1])


def test_encode_unknown_type_uses_untyped_ids():
    x = inst(["Acme", "hired", "Bob"], (0, 0), (2, 2), "ORG", "PERSON")
    ids, h, t, he, te = encode_instance(x, PIECES, MARKER_IDS, CLS, SEP, 32)
    assert ids[h] == MARKER_IDS["<h>"] and ids[t] == MARKER_IDS["<t:PERSON>"]
    assert ids == [CLS] + ids_of(["<h>", "Acme", "</h>", "hired", "<t:PERSON>", "Bob", "</t:PERSON>"]) + [SEP]


def check_window(x, max_length):
    """Properties of a truncated encoding: returns (ids, head, tail)."""
    full, fh, ft, *_ = encode_instance(x, PIECES, MARKER_IDS, CLS, SEP, 10 ** 6)
    assert len(full) > max_length  # the case under test really truncates
    ids, h, t, he, te = encode_instance(x, PIECES, MARKER_IDS, CLS, SEP, max_length)
    assert len(ids) == max_length
    assert ids[0] == CLS and ids[-1] == SEP
    assert CLS not in ids[1:-1] and SEP not in ids[1:-1]
    inner = ids[1:-1]
    start = fh - h  # the window is a contiguous slice of the full encoding, shifted equally for both
    assert ft - t == start
    assert inner == full[1 + start:1 + start + len(inner)]
    for pos, span, o, c in ((h, x.head, "<h:PERSON>", "</h:PERSON>"), (t, x.tail, "<t:CITY>", "</t:CITY>")):
        entity = ids_of([o] + x.tokens[span[0]:span[1] + 1] + [c])
        assert ids[pos:pos + len(entity)] == entity  # start marker, every piece, closing marker: all inside
        assert (he if pos == h else te) == pos + len(entity) - 1  # the closing marker's position
        assert pos + len(entity) <= max_length - 1
    # centred: the context kept on either side of the two entities differs by at most one token,
    # unless the window is pushed against an end of the sentence
    lo = min(h, t)
    hi = max(h + len(ids_of(x.tokens[x.head[0]:x.head[1] + 1])) + 1,
             t + len(ids_of(x.tokens[x.tail[0]:x.tail[1] + 1])) + 1)
    left, right = lo - 1, max_length - 2 - hi
    if start > 0 and 1 + start + len(inner) < len(full) - 1:
        assert abs(left - right) <= 1
    return ids, h, t


LONG = [f"w{i}" for i in range(300)]


@pytest.mark.parametrize("head,tail", [
    ((0, 1), (4, 4)),          # at the start
    ((2, 2), (0, 0)),
    ((150, 151), (155, 157)),  # in the middle
    ((160, 160), (140, 141)),
    ((296, 297), (299, 299)),  # at the end
    ((299, 299), (290, 292)),
    ((100, 100), (115, 116)),  # far apart (still fitting)
    ((130, 131), (110, 110)),
])
def test_encode_truncation_keeps_both_entities(head, tail):
    x = inst(LONG, head, tail)
    check_window(x, 64)


def test_encode_truncation_end_of_sentence_ends_with_last_word():
    x = inst(LONG, (295, 295), (298, 298))
    ids, _, _ = check_window(x, 48)
    # the last word is kept, followed by [SEP]
    assert ids[-1 - len(PIECES["w299"]):-1] == PIECES["w299"]


def test_encode_truncation_start_of_sentence_starts_with_first_word():
    x = inst(LONG, (1, 1), (3, 3))
    ids, h, _ = check_window(x, 48)
    assert ids[1:1 + len(PIECES["w0"])] == PIECES["w0"]


@pytest.mark.parametrize("seed", range(20))
def test_encode_truncation_random(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(80, 200))
    a = int(rng.integers(0, n - 12))
    la, gap, lb = int(rng.integers(1, 4)), int(rng.integers(0, 5)), int(rng.integers(1, 4))
    s1, s2 = (a, a + la - 1), (a + la + gap, min(a + la + gap + lb - 1, n - 1))
    head, tail = (s1, s2) if seed % 2 else (s2, s1)
    check_window(inst(LONG[:n], head, tail), 40)


def test_encode_returns_none_when_entities_do_not_fit():
    one = {f"w{i}": [1000 + i] for i in range(40)}  # one piece a word: lengths are easy to count
    x = inst(LONG[:40], (0, 0), (10, 10))
    # <h> w0 </h> w1..w9 <t> w10 </t> = 15 tokens, plus [CLS] [SEP]
    assert encode_instance(x, one, MARKER_IDS, CLS, SEP, 16) is None
    ids, h, t, he, te = encode_instance(x, one, MARKER_IDS, CLS, SEP, 17)
    assert len(ids) == 17 and (h, t) == (1, 13)
    assert ids[1:-1] == ids_of(["<h:PERSON>"]) + [1000] + ids_of(["</h:PERSON>"]) + \
        [1000 + i for i in range(1, 10)] + ids_of(["<t:CITY>"]) + [1010] + ids_of(["</t:CITY>"])
    # far apart in a long sentence
    assert encode_instance(inst(LONG, (5, 5), (200, 200)), PIECES, MARKER_IDS, CLS, SEP, 64) is None
    # one entity alone longer than the window
    assert encode_instance(inst(LONG, (10, 60), (62, 62)), PIECES, MARKER_IDS, CLS, SEP, 32) is None


# ---- relation context ---------------------------------------------------------------------------


def instance(tokens, head, tail, types=("PERSON", "CITY")):
    return Instance("x", tokens.split(), head, tail, types[0], types[1], None)


def test_context_key_words_between_order_and_types():
    a = instance("Obama was born in Honolulu", (0, 0), (4, 4))
    b = instance("Ada Lovelace was born in London .", (0, 1), (5, 5))
    assert data.context_key(a) == (True, ("born",), "PERSON", "CITY")  # 'was' and 'in' are STOPWORDS
    assert data.context_key(a) == data.context_key(b)                  # other entities, same context
    # the same words with the tail first is another key, and so are other types
    c = instance("Honolulu was born in Obama", (4, 4), (0, 0))
    assert data.context_key(c) == (False, ("born",), "PERSON", "CITY")
    d = instance("Obama was born in Honolulu", (0, 0), (4, 4), ("ORG", "CITY"))
    assert data.context_key(d) != data.context_key(a)
    # punctuation is kept: 'Paris , France'
    e = instance("Paris , France", (0, 0), (2, 2), ("LOC", "LOC"))
    assert data.context_key(e) == (True, (",",), "LOC", "LOC")


def test_context_key_none_when_nothing_or_too_much_between():
    assert data.context_key(instance("Obama Honolulu", (0, 0), (1, 1))) is None          # adjacent
    assert data.context_key(instance("Obama of the Honolulu", (0, 0), (3, 3))) is None   # only STOPWORDS
    long = "Obama " + " ".join(f"w{i}" for i in range(data.MAX_CONTEXT_WORDS + 1)) + " Honolulu"
    assert data.context_key(instance(long, (0, 0), (data.MAX_CONTEXT_WORDS + 2,) * 2)) is None
    ok = "Obama " + " ".join(f"w{i}" for i in range(data.MAX_CONTEXT_WORDS)) + " Honolulu"
    assert data.context_key(instance(ok, (0, 0), (data.MAX_CONTEXT_WORDS + 1,) * 2)) is not None


def test_context_groups_brute_force():
    rng = np.random.default_rng(0)
    words = ["born", "died", "in", "of", ",", "married"]
    xs = []
    for _ in range(200):
        between = " ".join(rng.choice(words, size=rng.integers(0, 3)))
        head_first = rng.random() < 0.5
        sent = f"A {between} B".split()
        h, t = ((0, 0), (len(sent) - 1,) * 2) if head_first else ((len(sent) - 1,) * 2, (0, 0))
        xs.append(Instance("x", sent, h, t, rng.choice(["P", "Q"]), "C", None))
    groups = data.context_groups(xs)
    keys = [data.context_key(x) for x in xs]
    for i in range(len(xs)):
        shared = [j for j in range(len(xs)) if j != i and keys[i] is not None and keys[j] == keys[i]]
        if shared:
            assert groups[i] >= 0 and all(groups[j] == groups[i] for j in shared)
        else:
            assert groups[i] == -1
    # ids are 0..G-1 and no two keys share one
    ids = sorted({g for g in groups if g >= 0})
    assert ids == list(range(len(ids)))
    assert len({keys[i] for i in range(len(xs)) if groups[i] >= 0}) == len(ids)
