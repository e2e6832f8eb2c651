"""Packed, memory-mapped token streams for causal-LM pre-training."""
from __future__ import annotations

import glob
import hashlib
import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .samplers import EpochSeededSampler, ResumableDataLoader

EOS = "<|endoftext|>"
DEMO_MODULES = (
    "argparse", "asyncio", "calendar", "collections", "configparser", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "glob", "gzip", "hashlib",
    "heapq", "inspect", "io", "ipaddress", "itertools", "json", "logging", "operator", "os", "pathlib",
    "pickle", "pprint", "queue", "random", "re", "sched", "shlex", "shutil", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "traceback", "typing", "unittest", "uuid", "warnings", "weakref", "zipfile",
)


def demo_corpus() -> Iterator[str]:
    """Documents that ship with Python itself: no download, deterministic for a Python version.

    The Python language reference topics of ``pydoc_data`` (what ``help('if')`` shows)
    followed by the docstrings (over 200 characters) of a fixed list of standard-library
    modules and their public members: about 0.9 MB of English technical prose.
    """
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    for name in DEMO_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # a module missing from this Python build
            continue
        members = [module] + [getattr(module, a, None) for a in sorted(dir(module)) if not a.startswith("_")]
        for obj in members:
            if obj is not module and getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200:
                yield doc


def _read_files(paths: Sequence[str], text_field: str) -> Iterator[str]:
    for path in paths:
        if path.endswith(".jsonl") or path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{line_no}: not a JSON line ({err.msg})") from None
                    if text_field not in record:
                        raise KeyError(f"{path}:{line_no}: no field {text_field!r} (fields: {sorted(record)})")
                    yield str(record[text_field])
        else:  # plain text: one document per file
            with open(path, encoding="utf-8") as f:
                yield f.read()


class PackedTokens(Dataset):
    """Windows of ``seq_len + 1`` tokens over one token stream, with stride ``seq_len``.

    Window ``i`` is ``tokens[i*L : i*L + L + 1]``: consecutive windows share one token,
    so the ``L`` next-token targets of all windows tile the stream without gap or
    overlap. Documents are separated by an end-of-text token inside the stream; the
    tail shorter than a window is dropped. ``tokens`` may be a read-only ``np.memmap``,
    so only the windows read are in memory.

    Example:
        >>> ds = PackedTokens(np.arange(10, dtype=np.uint16), seq_len=4)
        >>> len(ds), ds[0]["input_ids"].tolist(), ds[1]["input_ids"].tolist()
        (2, [0, 1, 2, 3, 4], [4, 5, 6, 7, 8])
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, labels: Optional[np.ndarray] = None) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if labels is not None and len(labels) != len(tokens):
            raise ValueError(f"labels ({len(labels)}) and tokens ({len(tokens)}) must have the same length")
        self.tokens = tokens
        self.labels = labels  # per-token feature labels (-1: none), returned as "feature_labels"
        self.seq_len = int(seq_len)

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        start = i * self.seq_len
        window = np.asarray(self.tokens[start : start + self.seq_len + 1], dtype=np.int64)
        item = {"input_ids": torch.from_numpy(window)}
        if self.labels is not None:
            labels = np.asarray(self.labels[start : start + self.seq_len + 1], dtype=np.int64)
            item["feature_labels"] = torch.from_numpy(labels)
        return item


class TextDataModule(pl.LightningDataModule):
    """Tokenised, packed fixed-length sequences for causal-LM pre-training.

    Sources (one of): ``files`` (paths or glob patterns of ``.txt`` files, one document
    each, or ``.jsonl`` files with the text in ``text_field``), ``dataset`` (a Hugging
    Face ``datasets`` name, streamed, needs the ``datasets`` package and network or a
    local cache; ``max_documents`` bounds it), or ``demo=True`` (documentation text
    bundled with Python, :func:`demo_corpus`), or ``code_languages=True`` (files already on
    the machine, labelled by language: Python, C, shell, prose;
    :mod:`~memel_lightning.data.code_languages`, ``code_docs_per_language`` documents of
    at most ``code_max_chars`` characters each). A labelled source adds
    ``"feature_labels"`` ``(B, seq_len + 1)`` to every batch: each token's language id,
    ``-1`` on the end-of-text tokens (``CausalLM.memel_labels`` passes them to the taps
    for the labelled False Killing Rate).

    ``tokenizer`` is a local folder with a ``tokenizer.json`` (e.g. a Pythia checkpoint's)
    or the file itself; when it is ``None`` a byte-level BPE of ``vocab_size`` tokens is
    trained on the training documents with ``tokenizers``. Documents are split into
    train/val (each document goes to val with probability ``val_fraction``, fixed by
    ``seed``), tokenised once, joined with an end-of-text token and written to
    ``cache_dir/<key>/{train,val}.bin`` (uint16 or uint32) by ``prepare_data`` (rank 0
    only); every later run with the same sources and settings reuses them, opened as
    read-only ``np.memmap`` so a large corpus never sits in RAM. Batches are
    ``{"input_ids": (B, seq_len + 1)}`` windows (:class:`PackedTokens`); the training
    order depends only on ``seed`` and the epoch.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> dm = TextDataModule(demo=True, seq_len=32, batch_size=4, vocab_size=512, cache_dir=tmp.name)
        >>> dm.prepare_data(); dm.setup("fit")
        >>> dm.vocab_size <= 512, next(iter(dm.train_dataloader()))["input_ids"].shape
        (True, torch.Size([4, 33]))
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        files: Optional[Union[str, Sequence[str]]] = None,
        dataset: Optional[str] = None,
        dataset_config: Optional[str] = None,
        dataset_split: str = "train",
        demo: bool = False,
        code_languages: bool = False,
        code_docs_per_language: int = 256,
        code_max_chars: int = 8000,
        text_field: str = "text",
        max_documents: Optional[int] = None,
        tokenizer: Optional[str] = None,
        vocab_size: int = 8192,
        tokenizer_train_chars: int = 50_000_000,
        seq_len: int = 128,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        seed: int = 0,
        cache_dir: Optional[str] = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        sources = sum(x is not None and x is not False for x in (files, dataset, demo or None, code_languages or None))
        if sources != 1:
            raise ValueError(
                "TextDataModule needs exactly one source: files=..., dataset=..., demo=True or code_languages=True"
            )
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if tokenizer is None and vocab_size < 260:
            raise ValueError(f"vocab_size must be >= 260 for a trained byte-level BPE, got {vocab_size}")
        self.files = [files] if isinstance(files, str) else (list(files) if files is not None else None)
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        root = cache_dir or os.environ.get("MEMEL_CACHE") or os.path.join(Path.home(), ".cache", "memel_lightning")
        self.cache_root = Path(root) / "text"
        self.train_set: Optional[PackedTokens] = None
        self.val_set: Optional[PackedTokens] = None
        self._meta: Optional[dict] = None
        self._code_docs: Optional[list] = None

    # ------------------------------------------------------------------ sources
    def _paths(self) -> list[str]:
        paths: list[str] = []
        for pattern in self.files or []:
            hits = sorted(glob.glob(os.path.expanduser(pattern)))
            if not hits:
                raise FileNotFoundError(f"TextDataModule: no file matches {pattern!r}")
            paths.extend(hits)
        return paths

    @property
    def labelled(self) -> bool:
        """Whether the source gives every token a feature label (``code_languages``)."""
        return bool(self.hparams.code_languages)

    def _code_documents(self) -> list:
        from .code_languages import code_language_documents

        if self._code_docs is None:
            hp = self.hparams
            self._code_docs = code_language_documents(
                seed=self.seed, docs_per_language=hp.code_docs_per_language, max_chars=hp.code_max_chars
            )
        return self._code_docs

    def documents(self) -> Iterator[str]:
        """Every document of the source, in a fixed order."""
        for doc, _ in self.labelled_documents():
            yield doc

    def labelled_documents(self) -> Iterator[tuple[str, int]]:
        """``(document, label)`` in the order of :meth:`documents`; label -1 for unlabelled sources."""
        hp = self.hparams
        if self.labelled:
            docs: Iterable = ((d.text, d.label) for d in self._code_documents())
        elif hp.demo:
            docs = demo_corpus()
        elif self.files is not None:
            docs = _read_files(self._paths(), hp.text_field)
        else:
            try:
                import datasets
            except ImportError as err:
                raise ImportError("dataset=... needs the 'datasets' package (pip install datasets)") from err
            stream = datasets.load_dataset(hp.dataset, hp.dataset_config, split=hp.dataset_split, streaming=True)
            docs = (str(r[hp.text_field]) for r in stream)
        for i, doc in enumerate(docs):
            if hp.max_documents is not None and i >= hp.max_documents:
                return
            doc, label = doc if isinstance(doc, tuple) else (doc, -1)
            if doc:
                yield doc, label

    def _is_val(self, rng: np.random.Generator) -> bool:
        """One draw per document, in document order: the same split for the tokenizer and the files."""
        return bool(rng.random() < self.hparams.val_fraction)

    def cache_key(self) -> str:
        """Hash of everything the token files depend on."""
        hp = self.hparams
        parts: dict = {k: hp[k] for k in ("dataset", "dataset_config", "dataset_split", "demo", "text_field",
                                          "max_documents", "vocab_size", "tokenizer_train_chars",
                                          "val_fraction", "seed")}
        parts["files"] = [(p, os.path.getsize(p), os.path.getmtime(p)) for p in self._paths()]
        if hp.tokenizer is not None:
            tok = self._tokenizer_file(hp.tokenizer)
            parts["tokenizer"] = (str(tok), os.path.getsize(tok), os.path.getmtime(tok))
        if hp.code_languages:  # the files found on this machine
            parts["code_languages"] = (hp.code_docs_per_language, hp.code_max_chars,
                                       [(d.source, len(d.text)) for d in self._code_documents()])
        if hp.demo:
            import sys

            parts["python"] = sys.version
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def cache_dir(self) -> Path:
        return self.cache_root / self.cache_key()

    # ------------------------------------------------------------------ tokenizer
    @staticmethod
    def _tokenizer_file(path: str) -> Path:
        p = Path(os.path.expanduser(path))
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"TextDataModule: no tokenizer.json at {path!r}")
        return p

    def _train_tokenizer(self, out: Path):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.hparams.vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        budget = self.hparams.tokenizer_train_chars
        rng = np.random.default_rng(self.seed)

        def train_docs() -> Iterator[str]:
            used = 0
            for doc in self.documents():
                if self._is_val(rng):
                    continue
                if used >= budget:
                    return
                used += len(doc)
                yield doc

        tok.train_from_iterator(train_docs(), trainer=trainer)
        tok.save(str(out))
        return tok

    def load_tokenizer(self):
        """The tokenizer the token files were written with (after ``prepare_data``)."""
        from tokenizers import Tokenizer

        if self.hparams.tokenizer is not None:
            return Tokenizer.from_file(str(self._tokenizer_file(self.hparams.tokenizer)))
        return Tokenizer.from_file(str(self.cache_dir / "tokenizer.json"))

    # ------------------------------------------------------------------ writing
    def prepare_data(self) -> None:
        out = self.cache_dir
        if (out / "meta.json").is_file():
            return
        out.mkdir(parents=True, exist_ok=True)
        if self.hparams.tokenizer is not None:
            tok = self.load_tokenizer()
        else:
            tok = self._train_tokenizer(out / "tokenizer.json")
        vocab = tok.get_vocab_size()
        eos = tok.token_to_id(EOS)
        if eos is None:
            raise ValueError(f"the tokenizer has no {EOS!r} token to separate documents")
        dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
        rng = np.random.default_rng(self.seed)
        counts = {"train": 0, "val": 0}
        docs = {"train": 0, "val": 0}
        tmp = {split: out / f"{split}.bin.tmp{os.getpid()}" for split in counts}
        handles = {split: open(tmp[split], "wb") for split in counts}
        labelled = self.labelled
        tmp_labels = {split: out / f"{split}.labels.bin.tmp{os.getpid()}" for split in counts}
        label_handles = {split: open(tmp_labels[split], "wb") for split in counts} if labelled else {}
        try:
            pending: dict[str, list[str]] = {"train": [], "val": []}
            pending_labels: dict[str, list[int]] = {"train": [], "val": []}

            def flush(split: str) -> None:
                if not pending[split]:
                    return
                encoded = tok.encode_batch(pending[split], add_special_tokens=False)
                for enc, label in zip(encoded, pending_labels[split]):
                    ids = np.asarray(enc.ids + [eos], dtype=dtype)
                    handles[split].write(ids.tobytes())
                    counts[split] += len(ids)
                    if labelled:  # the document's label on its tokens, -1 on the end-of-text
                        labels = np.full(len(ids), label, dtype=np.int8)
                        labels[-1] = -1
                        label_handles[split].write(labels.tobytes())
                docs[split] += len(pending[split])
                pending[split], pending_labels[split] = [], []

            for doc, label in self.labelled_documents():
                split = "val" if self._is_val(rng) else "train"
                pending[split].append(doc)
                pending_labels[split].append(label)
                if len(pending[split]) >= 512:
                    flush(split)
            for split in pending:
                flush(split)
        finally:
            for h in list(handles.values()) + list(label_handles.values()):
                h.close()
        for split in counts:
            os.replace(tmp[split], out / f"{split}.bin")
            if labelled:
                os.replace(tmp_labels[split], out / f"{split}.labels.bin")
        meta = {"dtype": np.dtype(dtype).name, "vocab_size": vocab, "eos_id": eos, "tokens": counts,
                "documents": docs, "hparams": {k: v for k, v in self.hparams.items()}}
        if labelled:
            from .code_languages import LANGUAGES

            meta["feature_labels"] = list(LANGUAGES)
        tmp_meta = out / f"meta.json.tmp{os.getpid()}"
        tmp_meta.write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp_meta, out / "meta.json")  # written last: its presence means the cache is complete

    # ------------------------------------------------------------------ reading
    @property
    def meta(self) -> dict:
        if self._meta is None:
            path = self.cache_dir / "meta.json"
            if not path.is_file():
                raise RuntimeError(f"no token cache at {self.cache_dir}; call prepare_data() first")
            self._meta = json.loads(path.read_text())
        return self._meta

    @property
    def vocab_size(self) -> int:
        """Tokens in the tokenizer (the model's vocab_size must be at least this)."""
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    def tokens(self, split: str) -> np.ndarray:
        """The read-only memory-mapped token stream of ``split`` (``train`` or ``val``)."""
        n = self.meta["tokens"][split]
        if n == 0:
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(self.cache_dir / f"{split}.bin", dtype=self.meta["dtype"], mode="r", shape=(n,))

    @property
    def feature_label_names(self) -> Optional[list[str]]:
        """Names of the feature labels of a labelled source (index = label id), else None."""
        return self.meta.get("feature_labels")

    def feature_labels(self, split: str) -> Optional[np.ndarray]:
        """The per-token feature labels of ``split`` (int8 memmap; -1: none), or None if unlabelled."""
        if not self.feature_label_names:
            return None
        n = self.meta["tokens"][split]
        if n == 0:
            return np.zeros(0, dtype=np.int8)
        return np.memmap(self.cache_dir / f"{split}.labels.bin", dtype=np.int8, mode="r", shape=(n,))

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = PackedTokens(self.tokens("train"), self.seq_len, self.feature_labels("train"))
        self.val_set = PackedTokens(self.tokens("val"), self.seq_len, self.feature_labels("val"))
        if len(self.train_set) == 0:
            raise ValueError(
                f"the training split has {self.meta['tokens']['train']} tokens: fewer than one window of "
                f"{self.seq_len + 1}; use a larger corpus or a shorter seq_len"
            )

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # pre-training checkpoints mid-epoch: resume exactly
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(self.train_set, seed=self.seed),
            num_workers=self.num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
