import json
import os
import string
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Tests never reach the network: every model they use is built here and loaded from a local directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_HIDDEN = 32  # hidden size of the tiny BERT: features are [N, 2 * TINY_HIDDEN]


def _tiny_vocab():
    """WordPiece vocabulary: the special tokens, every lowercased word of the embedded data, and
    single characters (with their '##' continuation pieces) so that any other word still tokenizes."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = set()
    for name in ("train.json", "test.json"):
        with open(REPO / "data" / name, encoding="utf-8") as f:
            for record in json.load(f):
                words.update(w.lower() for w in record["token"])
    vocab += sorted(words)
    chars = string.ascii_lowercase + string.digits
    singles = list(chars) + list(string.punctuation) + ["##" + c for c in chars]
    seen = set(vocab)
    for t in singles:
        if t not in seen:
            vocab.append(t)
            seen.add(t)
    return vocab


def _bert_tokenizer(vocab_file, vocab):
    """A WordPiece BERT tokenizer over `vocab`, on transformers 4 (vocab_file=) or 5 (vocab=)."""
    import transformers

    cls = getattr(transformers, "BertTokenizerFast", None) or transformers.BertTokenizer
    try:
        tok = cls(vocab_file=str(vocab_file), do_lower_case=True)
        if len(tok) == len(vocab):
            return tok
    except TypeError:
        pass
    # transformers 5: BertTokenizer (tokenizers backend) takes the vocabulary itself
    tok = cls(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    assert len(tok) == len(vocab), "could not build the tiny tokenizer with this transformers version"
    return tok


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny randomly initialised BERT and its tokenizer, saved with save_pretrained; returns the
    directory, to be passed as `--model PATH` (the scripts' real local-model loading code)."""
    import torch
    import transformers

    path = tmp_path_factory.mktemp("tiny_bert")
    vocab = _tiny_vocab()
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = _bert_tokenizer(vocab_file, vocab)
    tokenizer.save_pretrained(str(path))

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=TINY_HIDDEN, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(str(path))

    # what the scripts do with --model PATH must work on what was saved
    loaded = transformers.AutoTokenizer.from_pretrained(str(path))
    assert len(loaded) == len(vocab)
    assert loaded.convert_tokens_to_ids("[CLS]") == 2 and loaded.pad_token_id == 0
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small train and test file in the embedded data's format: the first 120 records of
    data/train.json and the first 40 of data/test.json.  Returns (train_path, test_path)."""
    d = tmp_path_factory.mktemp("tiny_data")
    out = []
    for name, n in (("train.json", 120), ("test.json", 40)):
        with open(REPO / "data" / name, encoding="utf-8") as f:
            records = json.load(f)[:n]
        p = d / name
        p.write_text(json.dumps(records), encoding="utf-8")
        out.append(p)
    return tuple(out)
