"""memel_labels(batch) of every domain with labels: what the labelled FKR is computed from."""
from __future__ import annotations

import torch

from tests.glue_fixtures import TINY_BERT


def test_digits_and_image_classifiers_label_each_image_by_its_class():
    from memel_lightning.models import DigitsClassifier, ImageClassifier

    x, y = torch.randn(4, 1, 8, 8), torch.tensor([3, 1, 4, 1])
    assert torch.equal(DigitsClassifier(hidden_sizes=(8,)).memel_labels((x, y)), y)
    image = ImageClassifier(num_classes=10, model_kwargs=dict(embed_dim=8, img_size=32, patch_size=2, window_size=4,
                                                               in_chans=1, num_heads=(1, 1, 1, 1)))
    assert torch.equal(image.memel_labels((x, y)), y)


def test_glue_labels_are_classes_and_stsb_scores_are_binned():
    from memel_lightning.models import GlueClassifier

    cfg = dict(TINY_BERT, num_hidden_layers=2, vocab_size=100)
    rte = GlueClassifier(task="rte", config=cfg)
    batch = {"input_ids": torch.zeros(3, 5, dtype=torch.long), "labels": torch.tensor([0, 1, 1])}
    assert torch.equal(rte.memel_labels(batch), batch["labels"])
    stsb = GlueClassifier(task="stsb", config=cfg)
    scores = torch.tensor([0.0, 0.99, 1.0, 2.5, 4.2, 5.0])
    assert stsb.memel_labels({"labels": scores}).tolist() == [0, 0, 1, 2, 4, 4]
    assert stsb.memel_labels({"input_ids": torch.zeros(1, 2)}) is None  # test sets have no labels
