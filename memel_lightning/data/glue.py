"""GLUE: the nine tasks plus the diagnostic set, from the official TSVs or Hugging Face."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .samplers import EpochSeededSampler, ResumableDataLoader


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is stored, labelled, scored and submitted.

    ``labels``: the label names in class-index order (None: regression, STS-B). They
    are the strings of the official TSVs and the ones the GLUE server expects. Text and
    label columns are looked up by header name; ``no_header`` is CoLA's train/dev
    layout (``source, label, original_label, sentence``, no header line).
    ``val_splits`` / ``test_splits``: ``(file stem, Hugging Face split, suffix of the
    logged metric names, submission file name)``.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: Optional[str]
    labels: Optional[tuple[str, ...]]
    hf_fields: tuple[str, ...]
    val_splits: tuple[tuple[str, str, str, str], ...]
    test_splits: tuple[tuple[str, str, str, str], ...]
    no_header: bool = False
    train: Optional[str] = "train"

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


def _std(sub: str) -> tuple[tuple[str, str, str, str], ...]:
    return (("dev", "validation", "", sub),)


def _test(sub: str) -> tuple[tuple[str, str, str, str], ...]:
    return (("test", "test", "", sub),)


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
NLI3 = ("entailment", "neutral", "contradiction")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("sentence",), "label", BINARY, ("sentence",), _std("CoLA.tsv"), _test("CoLA.tsv"),
                 no_header=True),
        GlueTask("sst2", "SST-2", ("sentence",), "label", BINARY, ("sentence",), _std("SST-2.tsv"), _test("SST-2.tsv")),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", BINARY, ("sentence1", "sentence2"),
                 _std("MRPC.tsv"), _test("MRPC.tsv")),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", BINARY, ("question1", "question2"),
                 _std("QQP.tsv"), _test("QQP.tsv")),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("sentence1", "sentence2"),
                 _std("STS-B.tsv"), _test("STS-B.tsv")),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", NLI3, ("premise", "hypothesis"),
                 (("dev_matched", "validation_matched", "_m", "MNLI-m.tsv"),
                  ("dev_mismatched", "validation_mismatched", "_mm", "MNLI-mm.tsv")),
                 (("test_matched", "test_matched", "_m", "MNLI-m.tsv"),
                  ("test_mismatched", "test_mismatched", "_mm", "MNLI-mm.tsv"))),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", NLI2, ("question", "sentence"),
                 _std("QNLI.tsv"), _test("QNLI.tsv")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", NLI2, ("sentence1", "sentence2"),
                 _std("RTE.tsv"), _test("RTE.tsv")),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", BINARY, ("sentence1", "sentence2"),
                 _std("WNLI.tsv"), _test("WNLI.tsv")),
        # The diagnostic set: no training or dev data; predicted with an MNLI model.
        GlueTask("ax", "diagnostic", ("sentence1", "sentence2"), None, NLI3, ("premise", "hypothesis"),
                 (), (("diagnostic", "test", "", "AX.tsv"),), train=None),
    )
}


def glue_task(task: str) -> GlueTask:
    """The :class:`GlueTask` named ``task`` (``cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, ax``)."""
    key = task.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


class GlueFormatError(ValueError):
    """A GLUE TSV file does not have the official layout."""


def _read_utf8_lines(path: Path) -> list[str]:
    """The file's lines without line ends or trailing blank lines (UTF-8, optional BOM); a
    byte that is not UTF-8 is a :class:`GlueFormatError` naming the file and line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = raw.count(b"\n", 0, err.start) + 1
        raise GlueFormatError(
            f"{path}, line {lineno}: byte {raw[err.start:err.start + 1]!r} is not UTF-8 (GLUE TSVs are UTF-8 text)"
        ) from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


@dataclass
class GlueSplit:
    """One split as plain lists: ``index`` (the file's id column, else the row number),
    one or two text lists and ``labels`` (class ids, floats for STS-B, None for test files)."""

    index: list[int]
    texts: list[list[str]]
    labels: Optional[list[Union[int, float]]]

    def __len__(self) -> int:
        return len(self.index)


def read_glue_tsv(path: Union[str, Path], task: Union[str, GlueTask], labelled: bool = True) -> GlueSplit:
    """Read one official GLUE TSV (quoting off, UTF-8, optional BOM).

    Columns are found by header name, so MNLI's train (12 columns) and dev (16 columns)
    files are both read; every row must have as many columns as the header (CoLA
    train/dev: exactly 4, no header). ``labelled=False`` reads a test file (no label
    column). Raises :class:`GlueFormatError` naming the file, the line and what was
    expected.

    Example:
        >>> split = read_glue_tsv("../shared/data/glue/RTE/dev.tsv", "rte")  # doctest: +SKIP
        >>> split.labels[:2]  # doctest: +SKIP
        [1, 1]
    """
    spec = task if isinstance(task, GlueTask) else glue_task(task)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE {spec.name}: no file {path}")
    lines = _read_utf8_lines(path)

    label_map = None if spec.labels is None else {name: i for i, name in enumerate(spec.labels)}
    index: list[int] = []
    texts: list[list[str]] = [[] for _ in spec.text_columns]
    labels: Optional[list[Union[int, float]]] = [] if labelled else None

    if spec.no_header and labelled:  # CoLA train/dev: source, label, original label, sentence
        width, text_idx, label_idx, index_idx, first = 4, [3], 1, None, 0
        layout = "4 columns (source, label, original_label, sentence) and no header"
    else:
        if not lines:
            raise GlueFormatError(f"{path}: empty file, expected a header line")
        header = lines[0].split("\t")
        width, first = len(header), 1
        wanted = list(spec.text_columns) + ([spec.label_column] if labelled and spec.label_column else [])
        missing = [c for c in wanted if c not in header]
        if missing:
            raise GlueFormatError(
                f"{path}, line 1: header {header} lacks column(s) {missing}; the GLUE {spec.name} "
                f"{'labelled' if labelled else 'test'} layout needs {wanted}"
            )
        text_idx = [header.index(c) for c in spec.text_columns]
        label_idx = header.index(spec.label_column) if labelled and spec.label_column else None
        index_idx = next((header.index(c) for c in ("index", "id") if c in header), None)
        layout = f"{width} tab-separated columns as in the header {header}"

    if len(lines) <= first:
        what = "only a header line" if lines else "nothing"
        raise GlueFormatError(f"{path}: {what}, no examples; expected {layout} and one example per line")
    for lineno, line in enumerate(lines[first:], start=first + 1):
        row = line.split("\t")
        if len(row) != width:
            raise GlueFormatError(f"{path}, line {lineno}: {len(row)} columns, expected {layout}")
        try:
            index.append(int(row[index_idx]) if index_idx is not None else lineno - first - 1)
        except ValueError:
            raise GlueFormatError(f"{path}, line {lineno}: index {row[index_idx]!r} is not an integer") from None
        for out, i in zip(texts, text_idx):
            out.append(row[i])
        if labels is not None:
            raw = row[label_idx].strip()
            if label_map is None:
                try:
                    labels.append(float(raw))
                except ValueError:
                    raise GlueFormatError(
                        f"{path}, line {lineno}: score {raw!r} is not a number (STS-B scores are floats in [0, 5])"
                    ) from None
            elif raw in label_map:
                labels.append(label_map[raw])
            else:
                raise GlueFormatError(
                    f"{path}, line {lineno}: unknown label {raw!r}; GLUE {spec.name} labels are {list(spec.labels)}"
                )
    return GlueSplit(index, texts, labels)


def load_glue_hf(task: Union[str, GlueTask], split: str) -> GlueSplit:
    """One split from the Hugging Face ``datasets`` GLUE configuration (hub or local cache)."""
    spec = task if isinstance(task, GlueTask) else glue_task(task)
    try:
        import datasets

        ds = datasets.load_dataset("glue", spec.name, split=split)
    except Exception as err:  # offline, no cache, no datasets: all end here
        raise RuntimeError(
            f"GLUE {spec.name}: no data_dir was given and the Hugging Face 'glue' dataset "
            f"({spec.name}, split {split!r}) could not be loaded ({type(err).__name__}: {err}). "
            f"Pass data_dir=<folder with the official GLUE TSVs of {spec.folder}>, e.g. "
            f"--data.data_dir ../shared/data/glue/{spec.folder}"
        ) from err
    texts = [list(ds[f]) for f in spec.hf_fields]
    raw = list(ds["label"])
    labelled = not split.startswith("test")
    labels = None if not labelled else ([float(x) for x in raw] if spec.is_regression else [int(x) for x in raw])
    return GlueSplit(list(ds["idx"]), texts, labels)


class GlueCollator:
    """Pads a list of tokenised examples to the longest in the batch (dynamic padding) or,
    with ``pad_to``, always to that length (fixed padding, as the MEmeL authors' code does).

    Batches are dicts with ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if
    the tokenizer makes them) of shape ``(B, L)``, ``idx`` (the GLUE index) and, for
    labelled splits, ``labels`` (long, float for STS-B).
    """

    def __init__(self, pad_token_id: int = 0, regression: bool = False, pad_to: Optional[int] = None) -> None:
        self.pad_token_id = int(pad_token_id)
        self.regression = regression
        self.pad_to = pad_to

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to is not None:
            length = max(length, int(self.pad_to))
        batch: dict[str, Tensor] = {}
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in features[0]]
        for key in keys:
            pad = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([list(f[key]) + [pad] * (length - len(f[key])) for f in features])
        batch["idx"] = torch.tensor([f["idx"] for f in features], dtype=torch.long)
        if "label" in features[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([f["label"] for f in features], dtype=dtype)
        return batch


class GlueDataModule(pl.LightningDataModule):
    """One GLUE task, tokenised for a Hugging Face model, dynamically padded.

    ``data_dir`` is the task's folder in the official GLUE layout (``train.tsv``,
    ``dev.tsv``, ``test.tsv``; MNLI ``dev_matched/dev_mismatched/test_matched/
    test_mismatched.tsv``; AX ``diagnostic.tsv``). Without it the Hugging Face
    ``datasets`` GLUE configuration is used (hub or local cache; otherwise the error
    says to pass ``data_dir``).

    ``tokenizer``: a hub name or local folder for ``AutoTokenizer``; when None the
    model's (``GlueClassifier.pretrained``) is used. When attached to a trainer together
    with a :class:`~memel_lightning.models.GlueClassifier`, ``setup`` hands the task to
    the model (so ``--data.task`` alone switches task). Texts are truncated to
    ``max_length`` tokens and padded per batch (``padding="longest"``) or always to
    ``max_length`` (``padding="max_length"``, the authors' set-up); the batch's ``attention_mask`` is what
    ``GlueClassifier.memel_mask`` gives the inhibition taps, so padding is never
    inhibited nor counted in the statistics.

    Validation has one loader (MNLI: matched then mismatched). ``predict_split``
    (``"test"`` or ``"dev"``) picks what ``predict`` runs on; see
    :class:`~memel_lightning.data.GlueSubmissionWriter` for the submission files.

    Example:
        >>> dm = GlueDataModule("rte", data_dir="../shared/data/glue/RTE",
        ...                     tokenizer="path/to/bert")  # doctest: +SKIP
        >>> dm.setup("fit"); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
        >>> sorted(batch)  # doctest: +SKIP
        ['attention_mask', 'idx', 'input_ids', 'labels', 'token_type_ids']
    """

    def __init__(
        self,
        task: str = "rte",
        data_dir: Optional[str] = None,
        tokenizer: Optional[str] = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        predict_split: str = "test",
        seed: int = 0,
        num_workers: int = 0,
        padding: str = "longest",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' (dynamic) or 'max_length' (fixed), got {padding!r}")
        self.spec = glue_task(task)
        # Record the canonical name ("RTE", "SST-2" -> "rte", "sst2"): Lightning merges these
        # hyper-parameters with the model's, which holds the canonical name too.
        self.hparams.task = self.spec.name
        self._hparams_initial["task"] = self.spec.name
        if predict_split not in ("test", "dev"):
            raise ValueError(f"predict_split must be 'test' or 'dev', got {predict_split!r}")
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        self.task = self.spec.name
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.tokenizer_name = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.predict_split = predict_split
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.tokenizer: Any = None
        self.splits: dict[str, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------ metadata
    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def val_suffixes(self) -> list[str]:
        """Suffix of the logged metric names per validation loader (MNLI: ``_m``, ``_mm``)."""
        return [s[2] for s in self.spec.val_splits]

    @property
    def submission_names(self) -> list[str]:
        """GLUE server file name per predict loader (``RTE.tsv``; MNLI ``MNLI-m.tsv``, ``MNLI-mm.tsv``)."""
        if self.predict_split == "test":
            return [s[3] for s in self.spec.test_splits]
        # dev-set predictions never take the name of the server file
        return [s[3].replace(".tsv", ".dev.tsv") for s in self.spec.val_splits]

    # ------------------------------------------------------------------ loading
    def _load(self, stem: str, hf_split: str, labelled: bool) -> GlueSplit:
        if self.data_dir is None:
            return load_glue_hf(self.spec, hf_split)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"GLUE {self.task}: data_dir {self.data_dir} is not a folder (expected the {self.spec.folder} "
                "folder of the official GLUE download)"
            )
        path = self.data_dir / f"{stem}.tsv"
        if not path.is_file() and not labelled and self.predict_split == "test":
            raise FileNotFoundError(
                f"GLUE {self.task}: no test file {path}; to predict the dev set instead use --data.predict_split dev"
            )
        return read_glue_tsv(path, self.spec, labelled=labelled)

    def _bind_model(self) -> None:
        trainer = getattr(self, "trainer", None)
        model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if model is not None:
            self.bind(model)

    def bind(self, model: Any) -> None:
        """Hand this task to ``model`` (a GlueClassifier builds its network for it) and take the
        model's tokenizer if none was given. ``setup`` does it for the trainer's model; call it
        yourself when using the two without a trainer (e.g. ``cli.py probe``)."""
        if hasattr(model, "bind_glue_task"):
            model.bind_glue_task(self.task)
            if self.tokenizer_name is None:
                self.tokenizer_name = getattr(model, "tokenizer_name", None)

    def _get_tokenizer(self) -> Any:
        if self.tokenizer is None:
            if self.tokenizer_name is None:
                raise ValueError(
                    f"GLUE {self.task}: no tokenizer: pass tokenizer=<hub name or folder> to GlueDataModule "
                    "(or give GlueClassifier a `pretrained` model, whose tokenizer is then used)"
                )
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
        return self.tokenizer

    def _encode(self, split: GlueSplit) -> list[dict[str, Any]]:
        tok = self._get_tokenizer()
        args = split.texts if len(split.texts) == 2 else split.texts[:1]
        enc = tok(*args, truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        rows = []
        for i in range(len(split)):
            row = {k: enc[k][i] for k in keys}
            row["idx"] = split.index[i]
            if split.labels is not None:
                row["label"] = split.labels[i]
            rows.append(row)
        return rows

    def _split(self, key: str, stem: str, hf_split: str, labelled: bool) -> list[dict[str, Any]]:
        if key not in self.splits:
            self.splits[key] = self._encode(self._load(stem, hf_split, labelled))
        return self.splits[key]

    def setup(self, stage: Optional[str] = None) -> None:
        self._bind_model()
        if stage in (None, "fit"):
            if self.spec.train is None:
                raise ValueError(
                    f"GLUE {self.task} has no training data (it is the diagnostic set): fit on mnli, then "
                    f"run predict with --data.task {self.task}"
                )
            self._split("train", self.spec.train, "train", True)
        if stage in (None, "fit", "validate", "test"):
            if not self.spec.val_splits:
                raise ValueError(f"GLUE {self.task} has no dev split; only predict is possible")
            for stem, hf, _, _ in self.spec.val_splits:
                self._split(stem, stem, hf, True)
        if stage in (None, "predict"):
            for stem, hf, _, _ in self._predict_splits():
                self._split(stem, stem, hf, self.predict_split == "dev")

    def _predict_splits(self) -> tuple[tuple[str, str, str, str], ...]:
        return self.spec.test_splits if self.predict_split == "test" else self.spec.val_splits

    # ------------------------------------------------------------------ loaders
    def _collator(self) -> GlueCollator:
        pad = getattr(self._get_tokenizer(), "pad_token_id", None)
        pad_to = self.hparams.max_length if self.hparams.padding == "max_length" else None
        return GlueCollator(pad_token_id=0 if pad is None else pad, regression=self.spec.is_regression, pad_to=pad_to)

    def _loader(self, rows: list[dict[str, Any]], train: bool = False) -> DataLoader:
        return (ResumableDataLoader if train else DataLoader)(  # mid-epoch resume is exact
            rows,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochSeededSampler(rows, seed=self.seed) if train else None,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits["train"], train=True)

    def val_dataloader(self) -> Union[DataLoader, list[DataLoader]]:
        loaders = [self._loader(self.splits[stem]) for stem, *_ in self.spec.val_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> Union[DataLoader, list[DataLoader]]:
        return self.val_dataloader()

    def predict_dataloader(self) -> Union[DataLoader, list[DataLoader]]:
        loaders = [self._loader(self.splits[stem]) for stem, *_ in self._predict_splits()]
        return loaders[0] if len(loaders) == 1 else loaders
