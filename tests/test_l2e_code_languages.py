"""The no-download code-language set: deterministic, labelled, robust, tokenised like TextDataModule."""
from __future__ import annotations

import numpy as np
import pytest

from memel_lightning.data import code_languages as cl
from memel_lightning.data.code_languages import (
    LANGUAGES,
    LabelledWindows,
    code_language_documents,
    encode_labelled,
)
from memel_lightning.data.text import EOS, TextDataModule


def test_documents_are_deterministic_given_the_seed_and_labelled_by_language():
    a = code_language_documents(seed=0, docs_per_language=5, max_chars=2000)
    b = code_language_documents(seed=0, docs_per_language=5, max_chars=2000)
    c = code_language_documents(seed=1, docs_per_language=5, max_chars=2000)
    assert [(d.source, d.label) for d in a] == [(d.source, d.label) for d in b]
    assert [d.source for d in a] != [d.source for d in c]
    present = {LANGUAGES[d.label] for d in a}
    assert {"python", "text"} <= present  # in every Python install (stdlib, pydoc_data fallback)
    for d in a:
        assert 400 <= len(d.text) <= 2000
        if LANGUAGES[d.label] == "python":
            assert d.source.endswith(".py")
        if LANGUAGES[d.label] == "shell":
            assert d.text.startswith("#!") or d.source.endswith(".sh")
        if LANGUAGES[d.label] == "c":
            assert d.source.endswith(".h")


def test_a_missing_language_is_dropped_with_a_warning_and_one_language_raises(monkeypatch):
    monkeypatch.setitem(cl.SOURCES, "c", ((lambda: [],), "nowhere"))
    with pytest.warns(UserWarning, match="dropped 'c'.*nowhere"):
        docs = code_language_documents(seed=0, docs_per_language=4, languages=("python", "c", "text"))
    assert {d.label for d in docs} == {LANGUAGES.index("python"), LANGUAGES.index("text")}
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="at least two languages"):
        code_language_documents(seed=0, docs_per_language=4, languages=("python", "c"))
    with pytest.raises(ValueError, match="unknown code languages"):
        code_language_documents(languages=("cobol",))


def test_text_falls_back_to_pydoc_topics(monkeypatch):
    monkeypatch.setitem(cl.SOURCES, "text", ((lambda: [], cl._pydoc_topics), "fallback"))
    docs = code_language_documents(seed=0, docs_per_language=4, languages=("python", "text"))
    assert all(d.source.startswith("pydoc_data.topics:") for d in docs if d.label == LANGUAGES.index("text"))


def test_tokens_match_the_text_modules_token_files(tmp_path):
    docs = code_language_documents(seed=0, docs_per_language=3, max_chars=1500)
    files = tmp_path / "docs"
    files.mkdir()
    for i, d in enumerate(docs):
        (files / f"{i:03d}.txt").write_text(d.text, encoding="utf-8")
    dm = TextDataModule(files=str(files / "*.txt"), vocab_size=400, val_fraction=0.0, seq_len=16,
                        cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    tok = dm.load_tokenizer()
    ids, labels = encode_labelled(tok, docs, eos_id=tok.token_to_id(EOS))
    np.testing.assert_array_equal(ids, np.asarray(dm.tokens("train"), dtype=np.int64))
    # every document's tokens carry its label; each end-of-text token is unlabelled
    eos_positions = np.flatnonzero(ids == dm.eos_id)
    assert len(eos_positions) == len(docs) and (labels[eos_positions] == -1).all()
    start = 0
    for d, end in zip(docs, eos_positions):
        assert (labels[start:end] == d.label).all()
        start = end + 1
    ds = LabelledWindows(ids, labels, seq_len=16)
    item = ds[2]
    np.testing.assert_array_equal(item["input_ids"].numpy(), ids[32:49])
    np.testing.assert_array_equal(item["feature_labels"].numpy(), labels[32:49])
