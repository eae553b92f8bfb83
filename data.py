"""Relation instances: reading them, checking them, and marking their entities.

Every stage reads its input file through here, so that a file is read and checked in exactly one way
(the run directory that the stages exchange is rundir.py).

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
"""
import json
from dataclasses import dataclass

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
