"""TextDataModule: packed windows, memory-mapped cache, tokenizer sources."""
import json

import numpy as np
import pytest
import torch

from memel_lightning.data.text import EOS, PackedTokens, TextDataModule


def test_packed_windows_tile_the_stream():
    stream = np.arange(103, dtype=np.uint16)
    ds = PackedTokens(stream, seq_len=10)
    assert len(ds) == (103 - 1) // 10 == 10
    windows = [ds[i]["input_ids"] for i in range(len(ds))]
    assert all(w.shape == (11,) and w.dtype == torch.int64 for w in windows)
    for a, b in zip(windows, windows[1:]):
        assert a[-1] == b[0]  # consecutive windows share exactly one token
    # inputs and targets of all windows tile the stream: no gap, no overlap
    targets = torch.cat([w[1:] for w in windows])
    inputs = torch.cat([w[:-1] for w in windows])
    assert torch.equal(targets, torch.arange(1, 101))
    assert torch.equal(inputs, torch.arange(0, 100))
    with pytest.raises(IndexError):
        ds[10]
    assert len(PackedTokens(np.arange(10), seq_len=9)) == 1
    assert len(PackedTokens(np.arange(10), seq_len=10)) == 0


def _write_docs(tmp_path, docs):
    path = tmp_path / "corpus.jsonl"
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return path


def test_jsonl_documents_are_joined_by_eos_and_cached(tmp_path):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    docs = [" ".join(rng.choice(words, size=rng.integers(5, 40))) for _ in range(60)]
    path = _write_docs(tmp_path, docs)
    dm = TextDataModule(files=str(path), vocab_size=300, seq_len=16, batch_size=4, val_fraction=0.2,
                        cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    tok = dm.load_tokenizer()
    eos = tok.token_to_id(EOS)
    assert dm.eos_id == eos
    # the two memory-mapped streams, decoded document by document, are the corpus split in order
    train, val = dm.tokens("train"), dm.tokens("val")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    decoded = []
    for stream in (train, val):
        ids = np.asarray(stream).tolist()
        assert ids[-1] == eos
        parts, cur = [], []
        for t in ids:
            if t == eos:
                parts.append(tok.decode(cur))
                cur = []
            else:
                cur.append(t)
        decoded.append(parts)
    assert dm.meta["documents"]["val"] == len(decoded[1]) > 0
    assert sorted(decoded[0] + decoded[1]) == sorted(docs)
    # windows from the loader are slices of the train stream
    batch = next(iter(dm.train_dataloader()))["input_ids"]
    assert batch.shape == (4, 17)
    w0 = batch[0].numpy()
    starts = [i * 16 for i in range(len(dm.train_set)) if np.array_equal(np.asarray(train[i * 16:i * 16 + 17]), w0)]
    assert starts
    # a second module with the same settings reuses the cache (no rewrite)
    mtime = (dm.cache_dir / "train.bin").stat().st_mtime_ns
    again = TextDataModule(files=str(path), vocab_size=300, seq_len=16, batch_size=4, val_fraction=0.2,
                           cache_dir=str(tmp_path / "cache"))
    again.prepare_data()
    assert again.cache_dir == dm.cache_dir and (dm.cache_dir / "train.bin").stat().st_mtime_ns == mtime


def test_tokenizer_from_folder_and_errors(tmp_path):
    docs = ["one two three four five six seven eight nine ten " * 5 for _ in range(10)]
    path = _write_docs(tmp_path, docs)
    first = TextDataModule(files=str(path), vocab_size=280, seq_len=8, val_fraction=0.0,
                           cache_dir=str(tmp_path / "a"))
    first.prepare_data()
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text((first.cache_dir / "tokenizer.json").read_text())
    second = TextDataModule(files=str(path), tokenizer=str(folder), seq_len=8, val_fraction=0.0,
                            cache_dir=str(tmp_path / "b"))
    second.prepare_data()
    assert np.array_equal(np.asarray(first.tokens("train")), np.asarray(second.tokens("train")))
    with pytest.raises(ValueError, match="exactly one source"):
        TextDataModule()
    with pytest.raises(FileNotFoundError, match="no file matches"):
        TextDataModule(files=str(tmp_path / "missing*.txt"), cache_dir=str(tmp_path)).prepare_data()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(KeyError, match="bad.jsonl:2"):
        TextDataModule(files=str(bad), vocab_size=280, cache_dir=str(tmp_path / "c")).prepare_data()
