"""Tiny GLUE folders in the official layouts, a word-level tokenizer and a tiny BERT config."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 6,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}

SENTS = [
    "A man is playing a guitar.",
    "The cat sat on the mat, quietly.",
    "Stocks fell sharply on Monday after the report.",
    "She said \"no\" twice.",
    "Rain is expected tomorrow in the north.",
    "Two dogs run across a field.",
    "The committee approved the plan.",
    "He bought three apples and a pear.",
]


def make_tokenizer(folder: Path, texts: list[str] | None = None, size: int = 2000) -> str:
    """A BERT WordPiece tokenizer whose vocabulary is the most frequent words of ``texts``
    (plus single characters), saved to ``folder``; returns the folder for ``AutoTokenizer``."""
    from transformers import BertTokenizer

    words = Counter()
    for t in (texts or []) + SENTS:
        words.update(re.findall(r"\w+|[^\w\s]", t.lower()))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    known = set(vocab)
    vocab += [w for w, _ in words.most_common(size) if w not in known]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder / "tok"))
    return str(folder / "tok")


def _rows(n: int, label_values: list[str]) -> list[tuple[int, str, str, str]]:
    return [(10 + 3 * i, SENTS[i % len(SENTS)], SENTS[(i + 3) % len(SENTS)], label_values[i % len(label_values)])
            for i in range(n)]


def write_task(task: str, folder: Path, n: int = 6) -> dict[str, list[tuple]]:
    """Write ``task``'s train/dev/test files (official GLUE layouts) into ``folder``.

    Returns ``{file stem: [(index, text_a, text_b, label string or None), ...]}`` as written
    (index None where the layout has no index column; text_b None for single sentences).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[tuple]] = {}

    def write(stem: str, header: list[str] | None, lines: list[list[str]], expected: list[tuple]) -> None:
        body = ([("\t".join(header))] if header else []) + ["\t".join(row) for row in lines]
        (folder / f"{stem}.tsv").write_text("\n".join(body) + "\n", encoding="utf-8")
        out[stem] = expected

    if task == "cola":
        for stem in ("train", "dev"):
            rows = _rows(n, ["0", "1"])
            write(stem, None, [["gj04", lab, "*" if lab == "0" else "", a] for _, a, _, lab in rows],
                  [(None, a, None, lab) for _, a, _, lab in rows])
        rows = _rows(n, ["0"])
        write("test", ["index", "sentence"], [[str(i), a] for i, a, _, _ in rows], [(i, a, None, None) for i, a, _, _ in rows])
    elif task == "sst2":
        for stem in ("train", "dev"):
            rows = _rows(n, ["0", "1"])
            write(stem, ["sentence", "label"], [[a, lab] for _, a, _, lab in rows], [(None, a, None, lab) for _, a, _, lab in rows])
        rows = _rows(n, ["0"])
        write("test", ["index", "sentence"], [[str(i), a] for i, a, _, _ in rows], [(i, a, None, None) for i, a, _, _ in rows])
    elif task == "mrpc":
        head = ["#1 ID", "#2 ID", "#1 String", "#2 String"]
        for stem in ("train", "dev"):
            rows = _rows(n, ["1", "0"])
            write(stem, ["Quality"] + head, [[lab, str(7000 + i), str(8000 + i), a, b] for i, a, b, lab in rows],
                  [(None, a, b, lab) for _, a, b, lab in rows])
        rows = _rows(n, ["0"])
        write("test", ["index"] + head, [[str(i), "1", "2", a, b] for i, a, b, _ in rows], [(i, a, b, None) for i, a, b, _ in rows])
    elif task == "qqp":
        for stem in ("train", "dev"):
            rows = _rows(n, ["0", "1"])
            write(stem, ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                  [[str(i), "5", "6", a, b, lab] for i, a, b, lab in rows], [(i, a, b, lab) for i, a, b, lab in rows])
        rows = _rows(n, ["0"])
        write("test", ["id", "question1", "question2"], [[str(i), a, b] for i, a, b, _ in rows],
              [(i, a, b, None) for i, a, b, _ in rows])
    elif task == "stsb":
        head = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
        for stem in ("train", "dev"):
            rows = _rows(n, ["5.000", "0.250", "3.800", "1.5"])
            write(stem, head + ["score"], [[str(i), "main-captions", "MSRvid", "2012test", "0001", "none", "none", a, b, s]
                                           for i, a, b, s in rows], [(i, a, b, s) for i, a, b, s in rows])
        rows = _rows(n, ["0"])
        write("test", head, [[str(i), "main-forums", "x", "2015", "0002", "none", "none", a, b] for i, a, b, _ in rows],
              [(i, a, b, None) for i, a, b, _ in rows])
    elif task == "mnli":
        parse = ["sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse"]
        head = ["index", "promptID", "pairID", "genre"] + parse + ["sentence1", "sentence2"]
        labs = ["neutral", "contradiction", "entailment"]
        rows = _rows(n, labs)
        write("train", head + ["label1", "gold_label"],
              [[str(i), "31193", "31193n", "government", "(", "(", "(", "(", a, b, lab, lab] for i, a, b, lab in rows],
              [(i, a, b, lab) for i, a, b, lab in rows])
        for stem in ("dev_matched", "dev_mismatched"):
            rows = _rows(n + 1, labs[::-1])
            write(stem, head + ["label1", "label2", "label3", "label4", "label5", "gold_label"],
                  [[str(i), "1", "1e", "fiction", "(", "(", "(", "(", a, b, lab, lab, "neutral", lab, lab, lab]
                   for i, a, b, lab in rows], [(i, a, b, lab) for i, a, b, lab in rows])
        for stem in ("test_matched", "test_mismatched"):
            rows = _rows(n, ["x"])
            write(stem, head, [[str(i), "1", "1e", "fiction", "(", "(", "(", "(", a, b] for i, a, b, _ in rows],
                  [(i, a, b, None) for i, a, b, _ in rows])
    elif task in ("qnli", "rte", "wnli"):
        cols = ["question", "sentence"] if task == "qnli" else ["sentence1", "sentence2"]
        labs = ["0", "1"] if task == "wnli" else ["entailment", "not_entailment"]
        for stem in ("train", "dev"):
            rows = _rows(n, labs)
            write(stem, ["index"] + cols + ["label"], [[str(i), a, b, lab] for i, a, b, lab in rows],
                  [(i, a, b, lab) for i, a, b, lab in rows])
        rows = _rows(n, ["x"])
        write("test", ["index"] + cols, [[str(i), a, b] for i, a, b, _ in rows], [(i, a, b, None) for i, a, b, _ in rows])
    elif task == "ax":
        rows = _rows(n, ["x"])
        write("diagnostic", ["index", "sentence1", "sentence2"], [[str(i), a, b] for i, a, b, _ in rows],
              [(i, a, b, None) for i, a, b, _ in rows])
    else:
        raise ValueError(task)
    return out
