"""GlueDataModule: every task's official layout, test files, errors, dynamic padding."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memel_lightning.data import GlueDataModule
from memel_lightning.data.glue import GLUE_TASKS, GlueFormatError, glue_task, read_glue_tsv
from tests.glue_fixtures import make_tokenizer, write_task


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_task_layout_reads_back(task: str, tmp_path: Path) -> None:
    """Each file of the official layout gives back the rows written, labels as class ids."""
    written = write_task(task, tmp_path / task)
    spec = glue_task(task)
    for stem, rows in written.items():
        labelled = rows[0][3] is not None
        split = read_glue_tsv(tmp_path / task / f"{stem}.tsv", spec, labelled=labelled)
        assert len(split) == len(rows)
        assert split.texts[0] == [r[1] for r in rows]
        if len(spec.text_columns) == 2:
            assert split.texts[1] == [r[2] for r in rows]
        expected_index = [r[0] if r[0] is not None else k for k, r in enumerate(rows)]
        assert split.index == expected_index
        if not labelled:
            assert split.labels is None
        elif spec.is_regression:
            assert split.labels == [float(r[3]) for r in rows]
        else:
            assert split.labels == [spec.labels.index(r[3]) for r in rows]


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_task_through_the_datamodule(task: str, tmp_path: Path, tokenizer_dir: str) -> None:
    written = write_task(task, tmp_path / task)
    spec = glue_task(task)
    dm = GlueDataModule(task, data_dir=str(tmp_path / task), tokenizer=tokenizer_dir, batch_size=4, max_length=16)
    if spec.train is None:
        with pytest.raises(ValueError, match="no training data"):
            dm.setup("fit")
    else:
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["labels"].dtype == (torch.float32 if spec.is_regression else torch.long)
        val = dm.val_dataloader()
        loaders = val if isinstance(val, list) else [val]
        assert len(loaders) == len(spec.val_splits) == len(dm.val_suffixes)
        for loader, (stem, *_rest) in zip(loaders, spec.val_splits):
            labels = torch.cat([b["labels"] for b in loader])
            if spec.is_regression:
                expected = torch.tensor([float(r[3]) for r in written[stem]])
            else:
                expected = torch.tensor([spec.labels.index(r[3]) for r in written[stem]])
            torch.testing.assert_close(labels, expected.to(labels.dtype))
    dm.setup("predict")
    pred = dm.predict_dataloader()
    loaders = pred if isinstance(pred, list) else [pred]
    assert len(loaders) == len(dm.submission_names)
    for loader, (stem, *_rest) in zip(loaders, spec.test_splits):
        batches = list(loader)
        assert all("labels" not in b for b in batches)  # test files have no labels
        assert torch.cat([b["idx"] for b in batches]).tolist() == [r[0] for r in written[stem]]


def test_submission_names() -> None:
    names = {t: GlueDataModule(t).submission_names for t in GLUE_TASKS}
    assert names == {
        "cola": ["CoLA.tsv"], "sst2": ["SST-2.tsv"], "mrpc": ["MRPC.tsv"], "qqp": ["QQP.tsv"], "stsb": ["STS-B.tsv"],
        "mnli": ["MNLI-m.tsv", "MNLI-mm.tsv"], "qnli": ["QNLI.tsv"], "rte": ["RTE.tsv"], "wnli": ["WNLI.tsv"],
        "ax": ["AX.tsv"],
    }


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    write_task("rte", tmp_path)
    path = tmp_path / "train.tsv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2] + "\textra"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GlueFormatError, match=r"train\.tsv, line 3: 5 columns, expected 4 tab-separated columns"):
        read_glue_tsv(path, "rte")
    cola = tmp_path / "cola"
    write_task("cola", cola)
    (cola / "dev.tsv").write_text("gj04\t1\t\tfine sentence\ngj04\t1\tonly three\n")
    with pytest.raises(GlueFormatError, match=r"dev\.tsv, line 2: 3 columns, expected 4 columns"):
        read_glue_tsv(cola / "dev.tsv", "cola")


def test_unknown_label_and_missing_header_column(tmp_path: Path) -> None:
    write_task("mnli", tmp_path)
    path = tmp_path / "dev_matched.tsv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\tmaybe"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GlueFormatError, match=r"dev_matched\.tsv, line 5: unknown label 'maybe'.*contradiction"):
        read_glue_tsv(path, "mnli")
    sts = tmp_path / "sts"
    write_task("stsb", sts)
    with pytest.raises(GlueFormatError, match=r"test\.tsv, line 1: header .* lacks column\(s\) \['score'\]"):
        read_glue_tsv(sts / "test.tsv", "stsb", labelled=True)
    bad = sts / "train.tsv"
    bad.write_text(bad.read_text().replace("\t5.000\n", "\tfive\n", 1))
    with pytest.raises(GlueFormatError, match=r"train\.tsv, line 2: score 'five' is not a number"):
        read_glue_tsv(bad, "stsb")


def test_unknown_task_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown GLUE task 'mnli-x'.*cola, sst2"):
        GlueDataModule("mnli-x")
    dm = GlueDataModule("rte", data_dir=str(tmp_path), tokenizer="unused")
    with pytest.raises(FileNotFoundError, match=r"no file .*train\.tsv"):
        dm.setup("fit")


def test_without_data_dir_the_error_says_to_pass_it() -> None:
    dm = GlueDataModule("rte", tokenizer="unused")
    with pytest.raises(RuntimeError, match=r"Pass data_dir=.*RTE"):
        dm.setup("fit")


def test_real_rte_and_sst2_files(shared_data: Path) -> None:
    for task, folder in (("rte", "RTE"), ("sst2", "SST-2")):
        for stem in ("train", "dev"):
            path = shared_data / "glue" / folder / f"{stem}.tsv"
            split = read_glue_tsv(path, task)
            lines = path.read_text(encoding="utf-8").splitlines()
            assert len(split) == len(lines) - 1
            last = lines[-1].split("\t")
            assert split.labels[-1] == glue_task(task).labels.index(last[-1])


def test_dynamic_padding_and_mask(shared_data: Path, tokenizer_dir: str) -> None:
    dm = GlueDataModule("rte", data_dir=str(shared_data / "glue" / "RTE"), tokenizer=tokenizer_dir,
                        batch_size=8, max_length=64)
    dm.setup("fit")
    lengths = set()
    for i, batch in enumerate(dm.train_dataloader()):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape == mask.shape and ids.shape[1] <= 64
        assert int(mask.sum(1).max()) == ids.shape[1]  # padded to the longest of the batch only
        assert bool((ids[mask == 0] == 0).all())       # [PAD] id 0 where masked
        lengths.add(ids.shape[1])
        if i == 20:
            break
    assert len(lengths) > 1
    # The sampler's order depends only on (seed, epoch).
    a = next(iter(dm.train_dataloader()))["idx"]
    b = next(iter(dm.train_dataloader()))["idx"]
    assert torch.equal(a, b)


def test_header_only_and_non_utf8_files_name_the_file_and_line(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel\n"
    (tmp_path / "train.tsv").write_text(header)
    with pytest.raises(GlueFormatError, match=r"train\.tsv: only a header line, no examples"):
        read_glue_tsv(tmp_path / "train.tsv", "rte")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(GlueFormatError, match=r"empty\.tsv: empty file"):
        read_glue_tsv(tmp_path / "empty.tsv", "rte")
    (tmp_path / "dev.tsv").write_bytes((header + "0\tA cat.\tA dog.\tentailment\n").encode() +
                                       b"1\tCaf\xe9 au lait.\tA drink.\tentailment\n")
    with pytest.raises(GlueFormatError, match=r"dev\.tsv, line 3: byte b'\\xe9' is not UTF-8"):
        read_glue_tsv(tmp_path / "dev.tsv", "rte")
