"""A labelled token-feature set that needs no download: "which language is this document in".

L2E measures its False Killing Rate (Eq. 3-4, docs/l2e.md) on the sparse-probing
feature sets of Gurnee et al. 2023, among them a *code language* set: every token is
labelled by the programming language of its document. This module builds a set of the
same kind from files every Linux machine with Python already has:

===========  ================================================================  =====
label        files (first existing roots, then fallbacks)                      id
===========  ================================================================  =====
``python``   ``*.py`` of the Python standard library (``sysconfig`` stdlib)    0
``c``        C headers ``/usr/include/**/*.h``; fallback: Python's own          1
             ``include`` directory (``sysconfig``)
``shell``    scripts whose first line is a ``sh``/``bash``/``dash`` shebang in    2
             ``/usr/bin``, ``/bin``, ``/usr/sbin``, ``/usr/lib/git-core``,
             ``/etc/init.d``, and ``*.sh`` under ``/etc``, ``/usr/share``,
             ``/usr/lib``
``text``     English prose: ``/usr/share/common-licenses/*``,                  3
             ``/usr/share/doc/*/{README*,*.md,*.txt,copyright}``; fallback:
             the language-reference topics of ``pydoc_data`` (in every Python)
===========  ================================================================  =====

A label's id is its index in ``languages`` whether or not the language was found, so
a model's label axis does not shift between machines. A language with fewer than
``min(min_docs, docs_per_language)`` usable documents is dropped with a warning naming the roots searched
(e.g. a slim container without ``/usr/include``); fewer than two languages left raises.
The choice is deterministic given ``seed`` and the files present: candidates are
sorted by path, ``docs_per_language`` are drawn without replacement, each document is
its file's first ``max_chars`` characters (files that are not UTF-8, or shorter than
``min_chars``, are skipped), and the documents of all languages are shuffled together.

:func:`encode_labelled` tokenises documents exactly as ``TextDataModule`` writes its
token files (``tokenizer.encode_batch(docs, add_special_tokens=False)`` followed by one
end-of-text token) and returns the per-token labels beside the ids, the end-of-text
token labelled ``-1`` (no language). :class:`LabelledWindows` cuts both streams into
``seq_len + 1`` windows like ``PackedTokens``: batches
``{"input_ids": (B, L+1), "feature_labels": (B, L+1)}``.

Example:
    >>> docs = code_language_documents(seed=0, docs_per_language=3, max_chars=300, min_chars=100)
    >>> sorted({LANGUAGES[d.label] for d in docs}) == sorted(available_languages(docs))
    True
"""
from __future__ import annotations

import glob
import os
import sysconfig
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

LANGUAGES = ("python", "c", "shell", "text")
SHELLS = (b"sh", b"bash", b"dash", b"ksh", b"zsh")
UNLABELLED = -1


@dataclass(frozen=True)
class LabelledDocument:
    """One document: its text, its language id (index in ``LANGUAGES``) and where it came from."""

    text: str
    label: int
    source: str


def _is_shell_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline(128)
    except OSError:
        return False
    if not first.startswith(b"#!"):
        return False
    words = first[2:].replace(b"/", b" ").split()
    # "#!/bin/sh", "#!/usr/bin/env bash", "#! /bin/bash -e"
    return any(w in SHELLS for w in words[:3])


def _stdlib_python() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = glob.glob(os.path.join(root, "*.py")) + glob.glob(os.path.join(root, "*", "*.py"))
    skip = ("site-packages", "dist-packages", f"{os.sep}test{os.sep}", f"{os.sep}tests{os.sep}")
    return [f for f in files if not any(s in f for s in skip)]


def _c_headers() -> list[str]:
    return glob.glob("/usr/include/*.h") + glob.glob("/usr/include/*/*.h")


def _python_headers() -> list[str]:
    return glob.glob(os.path.join(sysconfig.get_paths()["include"], "*.h"))


def _shell_scripts() -> list[str]:
    found = []
    for root in ("/usr/bin", "/bin", "/usr/sbin", "/usr/lib/git-core", "/etc/init.d"):
        if os.path.isdir(root) and not (root == "/bin" and os.path.realpath(root) == "/usr/bin"):
            found += [p for p in glob.glob(os.path.join(root, "*")) if os.path.isfile(p) and _is_shell_script(p)]
    for root in ("/etc", "/usr/share", "/usr/lib"):
        found += glob.glob(os.path.join(root, "*.sh")) + glob.glob(os.path.join(root, "*", "*.sh"))
    return found


def _prose() -> list[str]:
    files = glob.glob("/usr/share/common-licenses/*")
    for pattern in ("README*", "*.md", "*.txt", "copyright"):
        files += glob.glob(os.path.join("/usr/share/doc", "*", pattern))
    return [f for f in files if not f.endswith((".gz", ".bz2", ".xz"))]


def _pydoc_topics() -> list[str]:
    return [f"pydoc_data.topics:{key}" for key in _topics()]


def _topics() -> dict:
    from pydoc_data.topics import topics

    return topics


# language -> (sources tried in order, description of the roots for messages)
SOURCES: dict[str, tuple[tuple[Callable[[], list[str]], ...], str]] = {
    "python": ((_stdlib_python,), "the Python standard library"),
    "c": ((_c_headers, _python_headers), "/usr/include/**/*.h, Python's include directory"),
    "shell": ((_shell_scripts,), "shebang scripts in /usr/bin, /bin, /usr/sbin, /usr/lib/git-core, /etc/init.d; *.sh"),
    "text": ((_prose, _pydoc_topics), "/usr/share/common-licenses, /usr/share/doc/*, pydoc_data topics"),
}


def _read(source: str, max_chars: int) -> Optional[str]:
    if source.startswith("pydoc_data.topics:"):
        return _topics()[source.split(":", 1)[1]][:max_chars]
    try:
        with open(source, encoding="utf-8", errors="strict") as f:
            return f.read(max_chars)
    except (OSError, UnicodeDecodeError):
        return None


def code_language_documents(
    seed: int = 0,
    docs_per_language: int = 64,
    max_chars: int = 8000,
    min_chars: int = 400,
    languages: Sequence[str] = LANGUAGES,
    min_docs: int = 4,
) -> list[LabelledDocument]:
    """Documents of every available language, labelled by language (see the module doc)."""
    unknown = [lang for lang in languages if lang not in SOURCES]
    if unknown:
        raise ValueError(f"unknown code languages {unknown}; choose from {list(SOURCES)}")
    if docs_per_language < 1 or max_chars < 1 or min_docs < 1:
        raise ValueError(
            f"docs_per_language, max_chars and min_docs must be >= 1, got {docs_per_language}, {max_chars}, {min_docs}"
        )
    if not 0 <= min_chars <= max_chars:
        raise ValueError(f"min_chars must be in [0, max_chars={max_chars}], got {min_chars}")
    rng = np.random.default_rng(seed)
    docs: list[LabelledDocument] = []
    for lang in languages:
        label = LANGUAGES.index(lang)  # fixed ids: the label axis never shifts
        chosen = _choose(lang, label, rng, docs_per_language, max_chars, min_chars)
        if len(chosen) < min(min_docs, docs_per_language):
            warnings.warn(
                f"code languages: dropped {lang!r}: {len(chosen)} usable documents (< {min_docs}) in "
                f"{SOURCES[lang][1]}"
            )
            continue
        docs += chosen
    found = sorted({d.label for d in docs})
    if len(found) < 2:
        raise RuntimeError(
            f"code languages: found documents for {[LANGUAGES[i] for i in found]} only; a labelled set "
            "needs at least two languages (see memel_lightning/data/code_languages.py for the roots searched)"
        )
    order = rng.permutation(len(docs))
    return [docs[i] for i in order]


def _choose(
    lang: str, label: int, rng: np.random.Generator, n: int, max_chars: int, min_chars: int
) -> list[LabelledDocument]:
    for source in SOURCES[lang][0]:  # the first source with enough documents wins
        candidates = sorted(set(source()))
        out: list[LabelledDocument] = []
        for i in rng.permutation(len(candidates)):
            text = _read(candidates[i], max_chars)
            if text is not None and len(text.strip()) >= max(min_chars, 1):
                out.append(LabelledDocument(text, label, candidates[i]))
                if len(out) == n:
                    break
        if out:
            return out
    return []


def available_languages(docs: Iterable[LabelledDocument]) -> list[str]:
    """Names of the languages present in ``docs``."""
    return sorted({LANGUAGES[d.label] for d in docs})


def encode_labelled(tokenizer, docs: Sequence[LabelledDocument], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and per-token labels of ``docs`` joined by ``eos_id`` (labelled -1).

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (what ``TextDataModule.load_tokenizer()``
    returns); ids are encoded exactly as ``TextDataModule`` writes its token files."""
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    encoded = tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
    for doc, enc in zip(docs, encoded):
        ids.append(np.asarray(enc.ids + [eos_id], dtype=np.int64))
        lab = np.full(len(enc.ids) + 1, doc.label, dtype=np.int64)
        lab[-1] = UNLABELLED
        labels.append(lab)
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(ids), np.concatenate(labels)


class LabelledWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens (stride ``seq_len``) with their feature labels.

    Example:
        >>> ds = LabelledWindows(np.arange(9), np.array([0, 0, 0, 1, 1, -1, 2, 2, 2]), seq_len=4)
        >>> len(ds), ds[1]["feature_labels"].tolist()
        (2, [1, -1, 2, 2, 2])
    """

    def __init__(self, ids: np.ndarray, labels: np.ndarray, seq_len: int) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"ids ({len(ids)}) and labels ({len(labels)}) must have the same length")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.ids, self.labels, self.seq_len = ids, labels, int(seq_len)

    def __len__(self) -> int:
        return max(0, (len(self.ids) - 1) // self.seq_len)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        s = slice(i * self.seq_len, i * self.seq_len + self.seq_len + 1)
        return {
            "input_ids": torch.as_tensor(np.asarray(self.ids[s], dtype=np.int64)),
            "feature_labels": torch.as_tensor(np.asarray(self.labels[s], dtype=np.int64)),
        }
