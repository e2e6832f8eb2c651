"""ConvGRU cell, encoder-forecaster shapes, the balanced loss, and training with MEmeL taps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from memel_lightning import MEmeL, MEmeLCallback
from memel_lightning.data import HKO7DataModule
from memel_lightning.models import Nowcaster
from memel_lightning.models.convgru import ConvGRUCell
from memel_lightning.monitoring import nowcast_frames_image
from tests.tb_utils import read_events

SMALL = dict(arch_kwargs=dict(conv_channels=(4, 8, 8), hidden_channels=(8, 8, 8)))


def test_cell_equations_and_candidate_tap():
    torch.manual_seed(0)
    cell = ConvGRUCell(3, 4, i2h_kernel=3, h2h_kernel=5)
    x, h = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6)
    seen = []
    cell.candidate.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    out = cell(x, h)
    xi = F.conv2d(x, cell.i2h.weight, cell.i2h.bias, padding=1)
    hh = F.conv2d(h, cell.h2h.weight, cell.h2h.bias, padding=2)
    r = torch.sigmoid(xi[:, :4] + hh[:, :4])
    u = torch.sigmoid(xi[:, 4:8] + hh[:, 4:8])
    cand = F.leaky_relu(xi[:, 8:] + r * hh[:, 8:], 0.2)
    torch.testing.assert_close(seen[0], cand)
    torch.testing.assert_close(out, u * h + (1 - u) * cand)
    # a hook that replaces the candidate changes the new state accordingly
    cell.candidate.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    torch.testing.assert_close(cell(x, h), u * h)


def test_shapes_time_first_and_batch_first_agree():
    torch.manual_seed(0)
    tf = Nowcaster(in_frames=4, out_frames=3, **SMALL)
    bf = Nowcaster(in_frames=4, out_frames=3, batch_first=True, **SMALL)
    bf.load_state_dict(tf.state_dict())
    x = torch.rand(4, 2, 1, 30, 30)
    y_tf = tf(x)
    y_bf = bf(x.transpose(0, 1))
    assert y_tf.shape == (3, 2, 1, 30, 30) and y_bf.shape == (2, 3, 1, 30, 30)
    torch.testing.assert_close(y_bf.transpose(0, 1), y_tf)
    with pytest.raises(ValueError, match=r"in_frames=4.*\(T, B, C, H, W\)"):
        tf(torch.rand(2, 4, 1, 30, 30))
    # default geometry (kernels, strides): 120x120 frames -> 40, 20, 10 feature maps; narrow widths for speed
    default = Nowcaster(in_frames=2, out_frames=2, arch_kwargs=dict(conv_channels=(2, 4, 4), hidden_channels=(4, 4, 4)))
    sizes = []
    for i in range(3):
        default.net.encoder[i].cell.candidate.register_forward_hook(lambda m, a, o: sizes.append(tuple(o.shape[-2:])))
    assert default(torch.zeros(2, 1, 1, 120, 120)).shape == (2, 1, 1, 120, 120)
    assert sizes == [(40, 40)] * 2 + [(20, 20)] * 2 + [(10, 10)] * 2
    assert default.memel_taps() == [f"net.{s}.{i}.cell.candidate" for s in ("encoder", "forecaster") for i in range(3)]


def test_balanced_loss_matches_numpy():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, size=(3, 2, 1, 5, 5))
    p = rng.uniform(0, 1, size=t.shape)
    m = rng.random(t.shape) > 0.3
    model = Nowcaster(in_frames=1, out_frames=3, mse_weight=0.7, mae_weight=0.3, **SMALL)
    loss = model.balanced_loss(torch.tensor(p, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), torch.tensor(m))
    r = ((10 ** ((70 * t - 10) / 10)) / 58.53) ** (1 / 1.56)
    w = np.select([r < 0.5, r < 2, r < 5, r < 10, r < 30], [1, 1, 2, 5, 10], 30) * m
    mse = (w * (p - t) ** 2).sum(axis=(2, 3, 4)).mean()
    mae = (w * np.abs(p - t)).sum(axis=(2, 3, 4)).mean()
    assert float(loss) == pytest.approx((0.7 * mse + 0.3 * mae) / 25, rel=1e-5)


def test_training_with_memel_logs_the_six_taps(tmp_path):
    dm = HKO7DataModule(
        str(tmp_path / "data"), in_frames=3, out_frames=2, frame_size=24, raw_size=48, batch_size=4, eval_stride=4,
        eval_batch_size=8, cache=True, synthetic=dict(days=[1, 1, 1], frames_per_day=20, size=48, seed=0),
    )
    model = Nowcaster(in_frames=3, out_frames=2, lr=1e-3, **SMALL)
    # late_start counts training batches with the core's step lifecycle (begin_step/end_step),
    # calls before it: 2 batches of warm-up either way (6 calls = 2 batches of 3 encoder steps)
    per_batch_counting = hasattr(MEmeL, "begin_step")
    cb = MEmeLCallback(taps="default", memel=dict(late_start=2 if per_batch_counting else 6, forget_steps=10),
                       log_every_n_steps=1, hist_every_n_steps=2)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=4, limit_val_batches=1, log_every_n_steps=1, val_check_interval=4,
        logger=TensorBoardLogger(str(tmp_path), name="tb"), callbacks=[cb], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    taps = model.memel_taps()
    assert cb.tap_names == taps
    # one shared MEmeL per cell, called once per time step (T_in for encoder, T_out for forecaster
    # cells); its step counter counts batches (lifecycle) or calls (before it)
    for name in taps:
        per_batch = 1 if per_batch_counting else (3 if ".encoder." in name else 2)
        assert cb.memel_for(name).step == 4 * per_batch
        assert cb.memel_for(name).neuron_shape is not None and len(cb.memel_for(name).neuron_shape) == 3
    events = read_events(trainer.logger.log_dir)
    tags = set(events.Tags()["scalars"])
    assert list(cb.labels.values()) == ["encoder.0", "encoder.1", "encoder.2", "forecaster.0", "forecaster.1", "forecaster.2"]
    for label in cb.labels.values():
        assert {f"memel/{label}/selected_frac", f"memel/{label}/mono_ratio", f"memel/{label}/phi_max"} <= tags
    assert "memel/mono_ratio" in tags and "train_loss" in tags
    assert {"val_loss", "val_bmse", "val_bmae", "val_csi_0p5", "val_csi_30", "val_hss_2"} <= tags
    # inhibition started after the late start (2 batches)
    last = [e.value for e in events.Scalars("memel/encoder.0/selected_frac")]
    assert last[0] == 0.0 and last[-1] > 0.0
    assert "val_frames" in events.Tags()["images"]
    img = events.Images("val_frames")[-1]  # rows: 3 input frames, 2 observed, 2 predicted
    height, width, _ = nowcast_frames_image(torch.zeros(3, 24, 24), torch.zeros(2, 24, 24), torch.zeros(2, 24, 24)).shape
    assert (img.width, img.height) == (width, height)


CONFIGS = ["convgru_hko7_memel", "convgru_synthetic_memel", "convgru_synthetic_baseline", "convgru_hko7_paper_baseline",
           "convgru_hko7_paper_memel", "convgru_hko7_paper_finetune_baseline"]


def _memel_options(cli):
    """The ``memel`` options of the config's MEmeLCallback entry (None without one)."""
    for entry in cli.config["trainer"]["callbacks"] or []:
        if entry["class_path"].endswith("MEmeLCallback"):
            return entry["init_args"]["memel"]
    return None


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_instantiate(name, tmp_path):
    from memel_lightning.cli import main

    cli = main(["--config", f"configs/{name}.yaml", "--data.root", str(tmp_path), "--trainer.logger", "false"],
               run=False)
    assert isinstance(cli.model, Nowcaster) and isinstance(cli.datamodule, HKO7DataModule)
    assert cli.model.hparams.batch_first == cli.datamodule.batch_first
    assert (cli.model.hparams.in_frames, cli.model.hparams.out_frames) == (cli.datamodule.in_frames, cli.datamodule.out_frames)
    memel = _memel_options(cli)
    assert (memel is None) == (name.endswith("baseline"))
    if memel is not None:
        # late_start counts training batches, forget_steps statistics updates (no x T arithmetic)
        want = (1, 10) if "paper" in name else (10, 100)
        assert (memel["late_start"], memel["forget_steps"]) == want
    if "paper" in name:
        assert cli.model.hparams.arch == "memel_paper" and cli.model.hparams.loss_scale == 5e-5
        assert cli.datamodule.crop == "central" and cli.datamodule.static_mask_path == tmp_path / "mask_dat.npz"
        assert not cli.datamodule.use_mask and cli.datamodule.eval_starts == "timeline"
        assert cli.datamodule.strides["test"] == 5 and cli.datamodule.batch_size == 16
        assert cli.trainer.gradient_clip_val == 50.0 and cli.trainer.gradient_clip_algorithm == "value"
        steps, lr, step_size = {"baseline": (20000, 1e-4, 5000)}.get(name.rsplit("_", 1)[-1], (2000, 2.4e-5, None))
        if name.endswith("finetune_baseline"):
            steps, lr, step_size = 2000, 2.4e-5, None
        assert (cli.trainer.max_steps, cli.model.hparams.lr, cli.model.hparams.lr_step_size) == (steps, lr, step_size)


def test_authors_architecture_geometry_and_layers():
    from memel_lightning.models.convgru import build_arch, list_archs

    assert {"hko7_benchmark", "memel_paper"} <= set(list_archs())
    net = build_arch("memel_paper")
    sizes = {}
    for part in ("encoder", "forecaster"):
        for i in range(3):
            getattr(net, part)[i].cell.candidate.register_forward_hook(
                lambda m, a, o, key=(part, i): sizes.update({key: (o.shape[1],) + tuple(o.shape[-2:])}))
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 1, 120, 120), out_frames=2)
    assert out.shape == (2, 1, 1, 120, 120)
    # feature maps 24, 8, 4 on 120x120; GRU channels 64/192/192
    for part in ("encoder", "forecaster"):
        assert [sizes[(part, i)] for i in range(3)] == [(64, 24, 24), (192, 8, 8), (192, 4, 4)]
    # every weight of the authors' endegru120 network (their net_params.py), transcribed layer by layer
    authors = [
        (8, 1, 7, 7), (192, 8, 3, 3), (192, 64, 5, 5),            # conv1 (k7 s5), core1 i2h/h2h
        (64, 64, 5, 5), (576, 64, 3, 3), (576, 192, 5, 5),        # conv2 64->64 (k5 s3), core2
        (192, 192, 3, 3), (576, 192, 3, 3), (576, 192, 3, 3),     # conv3 (k3 s2), core3
        (576, 192, 3, 3), (576, 192, 3, 3), (192, 192, 4, 4),     # rnn3 (zero input through i2h), deconv1 k4 s2
        (576, 192, 3, 3), (576, 192, 5, 5), (192, 192, 5, 5),     # rnn2, deconv2 k5 s3
        (192, 192, 3, 3), (192, 64, 5, 5), (64, 8, 7, 7),         # rnn1 192->64, deconv3 k7 s5
        (1, 8, 1, 1),                                             # conv3_3 (1x1 output conv, no activation)
    ]
    ours = sorted(tuple(p.shape) for n, p in net.named_parameters() if n.endswith("weight"))
    assert ours == sorted(authors)
    want_params = sum(int(np.prod(s)) + s[1 if len(s) == 4 and s in [(192, 192, 4, 4), (192, 192, 5, 5), (64, 8, 7, 7)] else 0]
                      for s in authors)
    assert sum(p.numel() for p in net.parameters()) == want_params
    strides = [net.encoder[i].down[0].stride[0] for i in range(3)] + [net.forecaster[i].up.stride[0] for i in range(3)]
    assert strides == [5, 3, 2, 5, 3, 2]
    with pytest.raises(ValueError, match="unknown nowcasting architecture 'nope'"):
        build_arch("nope")
    with pytest.raises(ValueError, match="architecture 'memel_paper'.*colour"):
        build_arch("memel_paper", colour=1)


def test_authors_cell_leaky_gates_and_zero_input():
    torch.manual_seed(1)
    cell = ConvGRUCell(3, 4, i2h_kernel=3, h2h_kernel=5, gate_act=True)
    x, h = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6)
    xi = F.leaky_relu(F.conv2d(x, cell.i2h.weight, cell.i2h.bias, padding=1), 0.2)
    hh = F.leaky_relu(F.conv2d(h, cell.h2h.weight, cell.h2h.bias, padding=2), 0.2)
    r, u = torch.sigmoid(xi[:, :4] + hh[:, :4]), torch.sigmoid(xi[:, 4:8] + hh[:, 4:8])
    cand = F.leaky_relu(xi[:, 8:] + r * hh[:, 8:], 0.2)
    torch.testing.assert_close(cell(x, h), u * h + (1 - u) * cand)
    # the top forecaster cell: no input = zeros through the input convolution (its bias counts)
    top = ConvGRUCell(3, 4, gate_act=True, zero_input=True)
    torch.nn.init.uniform_(top.i2h.bias, 0.5, 1.0)
    torch.testing.assert_close(top(None, h), top(torch.zeros(2, 3, 6, 6), h))
    plain = ConvGRUCell(3, 4, gate_act=True)
    plain.load_state_dict(top.state_dict())
    assert not torch.allclose(plain(None, h), top(None, h))


def test_nowcaster_is_built_from_its_network(tmp_path):
    model = Nowcaster(in_frames=2, out_frames=2, arch="memel_paper",
                      arch_kwargs=dict(hidden_channels=(4, 6, 6), conv_channels=(2, 4, 6), up_channels=(2, 6, 6),
                                       top_input_channels=6))
    assert model.net.encoder[0].down[0].kernel_size == (7, 7) and model.net.forecaster[2].cell.zero_input
    # init_from copies the net weights of a checkpoint; nothing else
    torch.save({"state_dict": {f"net.{k}": v + 1 for k, v in model.net.state_dict().items()}}, tmp_path / "a.ckpt")
    again = Nowcaster(in_frames=2, out_frames=2, arch="memel_paper", arch_kwargs=model.hparams.arch_kwargs,
                      init_from=str(tmp_path / "a.ckpt"))
    for k, v in model.net.state_dict().items():
        torch.testing.assert_close(again.net.state_dict()[k], v + 1)
    with pytest.raises(ValueError, match="does not fit arch 'hko7_benchmark'"):
        Nowcaster(in_frames=2, out_frames=2, init_from=str(tmp_path / "a.ckpt"))
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        Nowcaster(init_from=str(tmp_path / "missing.ckpt"))
    # the step schedule: x gamma every lr_step_size optimiser steps
    model = Nowcaster(in_frames=2, out_frames=2, lr=1e-4, lr_step_size=3, lr_gamma=0.7, **SMALL)
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    np.testing.assert_allclose(lrs, [1e-4] * 3 + [7e-5] * 3 + [4.9e-5], rtol=1e-12)
