"""The ImageNet-22k -> 1k head mapping shipped with the package (the official Swin release's map)."""
import pytest
import timm
import torch

from memel_lightning.models.image import IMAGENET22K_TO_1K, load_pretrained_file, resolve_head_class_map

TINY = dict(embed_dim=8, depths=(1, 1), num_heads=(1, 1), img_size=16, patch_size=4, window_size=2)


def _swin(num_classes: int) -> torch.nn.Module:
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=num_classes, **TINY)


def test_shipped_map_is_the_official_one():
    rows = [int(x) for x in IMAGENET22K_TO_1K.read_text().split()]
    assert len(rows) == 1000 and len(set(rows)) == 1000
    assert min(rows) >= 0 and max(rows) < 21841
    # spot checks against the official map22kto1k.txt (first, last, and its one out-of-order entry)
    assert rows[:3] == [359, 368, 460] and rows[-1] == 21817 and rows[rows.index(11137) + 1] == 5564


def test_22k_head_is_mapped_by_default(tmp_path):
    src = _swin(21841)  # a 22k-shaped head on a tiny body
    with torch.no_grad():
        src.head.fc.weight.normal_()
        src.head.fc.bias.normal_()
    path = tmp_path / "swin_22k.pth"
    torch.save({"model": src.state_dict()}, path)  # timm layout; the official layout is tested in test_swin_model
    rows = torch.tensor([int(x) for x in IMAGENET22K_TO_1K.read_text().split()])

    dst = _swin(1000)
    report = load_pretrained_file(dst, path)  # head_class_map="auto"
    assert report["head_mapped"] == ["head.fc.weight", "head.fc.bias"] and not report["head_reset"]
    assert torch.equal(dst.head.fc.weight, src.head.fc.weight[rows])
    assert torch.equal(dst.head.fc.bias, src.head.fc.bias[rows])

    reset = _swin(1000)
    assert load_pretrained_file(reset, path, head_class_map=None)["head_reset"] == ["head.fc.weight", "head.fc.bias"]
    assert torch.count_nonzero(reset.head.fc.weight) == 0

    other = _swin(10)  # not a 1k model: the official code resets the head
    assert load_pretrained_file(other, path)["head_reset"] == ["head.fc.weight", "head.fc.bias"]


def test_bad_map_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="head_class_map"):
        resolve_head_class_map(tmp_path / "nope.txt", 21841, 1000)
