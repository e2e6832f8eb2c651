"""The HKO-7 paper-protocol command: its report arithmetic, its argument checks, and (slow)
one tiny round end to end on a synthetic 480x480 tree."""
import json

import numpy as np
import pytest

from memel_lightning.protocols import hko7_paper


def _rounds(rng, n_rounds=3, n_frames=4):
    return [{v: {m: rng.uniform(100, 2000, n_frames).tolist() for m in ("bmse", "bmae")} for v in hko7_paper.VARIANTS}
            for _ in range(n_rounds)]


def test_report_is_the_mean_over_rounds_per_frame_and_of_the_frame_means():
    rounds = _rounds(np.random.default_rng(0))
    text = hko7_paper.summarise(rounds)
    lines = text.splitlines()
    for metric, label in (("bmse", "B-MSE"), ("bmae", "B-MAE")):
        at = next(i for i, line in enumerate(lines) if line.startswith(label))
        for offset, variant in enumerate(hko7_paper.VARIANTS, 1):
            row = lines[at + offset].split()
            assert row[0] == variant
            values = np.array([r[variant][metric] for r in rounds], dtype=np.float64)  # rounds x frames
            want = list(values.mean(axis=0)) + [values.mean(axis=1).mean(), values.mean(axis=1).std(ddof=1)]
            np.testing.assert_allclose([float(x) for x in row[1:]], want, atol=0.006)
    assert "309.96 / 1003.41" in text


def test_arguments_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        hko7_paper.main(["--root", str(tmp_path)])
    assert "has no pd" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hko7_paper.main(["--root", str(tmp_path), "--rounds", "0"])
    assert "--rounds must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_one_tiny_round_end_to_end(tmp_path, capsys):
    from memel_lightning.data.synthetic_radar import generate

    root = generate(tmp_path / "syn", days=(1, 1, 1), frames_per_day=45, seed=0)
    assert hko7_paper.main(["--root", str(root), "--rounds", "1", "--scale", "tiny", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "finetune_baseline" in out and "memel" in out
    result = json.loads((tmp_path / "out" / "results.json").read_text())["rounds"][0]
    for variant in hko7_paper.VARIANTS:
        assert len(result[variant]["bmse"]) == 10 and all(np.isfinite(result[variant]["bmae"]))
