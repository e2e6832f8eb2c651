"""TextDataModule(code_languages=True): per-token language labels beside the packed tokens."""
from __future__ import annotations

import numpy as np
import pytest

from memel_lightning.data.code_languages import LANGUAGES, code_language_documents, encode_labelled
from memel_lightning.data.text import TextDataModule


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    dm = TextDataModule(code_languages=True, code_docs_per_language=6, code_max_chars=1500, vocab_size=400,
                        seq_len=24, batch_size=4, val_fraction=0.25, cache_dir=str(tmp_path_factory.mktemp("c")))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_labels_follow_the_tokens_of_each_document(dm):
    assert dm.feature_label_names == list(LANGUAGES)
    docs = code_language_documents(seed=0, docs_per_language=6, max_chars=1500)
    tok = dm.load_tokenizer()
    ids, labels = encode_labelled(tok, docs, dm.eos_id)
    # documents go to train or val in order: the two splits' streams interleave the full one
    rng = np.random.default_rng(0)
    is_val = np.array([rng.random() < 0.25 for _ in docs])
    starts = np.concatenate([[0], np.flatnonzero(ids == dm.eos_id) + 1])
    for split, keep in (("train", ~is_val), ("val", is_val)):
        parts = [slice(starts[i], starts[i + 1]) for i in range(len(docs)) if keep[i]]
        np.testing.assert_array_equal(np.asarray(dm.tokens(split)), np.concatenate([ids[p] for p in parts]))
        np.testing.assert_array_equal(np.asarray(dm.feature_labels(split)), np.concatenate([labels[p] for p in parts]))


def test_batches_carry_feature_labels_aligned_with_input_ids(dm):
    batch = next(iter(dm.train_dataloader()))
    assert batch["feature_labels"].shape == batch["input_ids"].shape == (4, 25)
    eos = batch["input_ids"] == dm.eos_id
    assert (batch["feature_labels"][eos] == -1).all() and (batch["feature_labels"][~eos] >= 0).all()


def test_one_source_only():
    with pytest.raises(ValueError, match="exactly one source"):
        TextDataModule(demo=True, code_languages=True)
