"""ConvGRU cell, the encoder-forecaster network, and a registry of its named architectures.

Plain ``nn.Module`` s, no Lightning. Frames are time-first ``(T, B, C, H, W)``.
Architectures (timm style: a name maps to a builder whose keyword arguments have
defaults and override them):

- ``hko7_benchmark``: the HKO-7 benchmark's ConvGRU (Shi et al. 2017), kernels 5/3/3,
  strides 3/2/2 (feature maps 40, 20, 10 on 120x120).
- ``memel_paper``: the MEmeL authors' network (their ``physics/exp/net_params.py``),
  kernels 7/5/3, strides 5/3/2 (feature maps 24, 8, 4 on 120x120), conv2 64 -> 64,
  LeakyReLU on the input and hidden convolutions before the gates, a top forecaster cell
  fed zeros through its input convolution, deconvolutions 4/5/7 and a 1x1 output conv.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn


class ConvGRUCell(nn.Module):
    r"""Convolutional GRU cell of the HKO-7 benchmark::

        [x_r, x_u, x_h] = conv_i2h(x)          (omitted when ``input_channels == 0``)
        [h_r, h_u, h_h] = conv_h2h(h)
        r  = sigmoid(x_r + h_r)                 reset gate
        u  = sigmoid(x_u + h_u)                 update gate
        h~ = act(x_h + r * h_h)                 candidate state -> ``self.candidate``
        h' = u * h + (1 - u) * h~

    ``act`` is a leaky ReLU (slope ``negative_slope``, 0.2 as in the benchmark). With
    ``gate_act`` the outputs of ``conv_i2h`` and ``conv_h2h`` go through ``act`` too before
    the gates (the MEmeL authors' cell). Without an input (``x=None``) a cell built with
    ``input_channels > 0`` and ``zero_input`` runs ``conv_i2h`` on zeros (its bias enters
    the gates, as in the authors' top forecaster cell); otherwise the input terms are
    dropped (the benchmark). The
    candidate state goes through ``self.candidate`` (an ``nn.Identity``): a forward hook
    on it (``MEmeLCallback`` tap ``<cell>.candidate``) sees ``h~`` of shape
    ``(B, hidden_channels, H, W)`` at every time step, before the update gate mixes it
    with the old state (docs/method.md §6).

    Example:
        >>> cell = ConvGRUCell(input_channels=2, hidden_channels=4)
        >>> h = cell(torch.zeros(3, 2, 8, 8))
        >>> cell(torch.zeros(3, 2, 8, 8), h).shape
        torch.Size([3, 4, 8, 8])
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: int,
        i2h_kernel: int = 3,
        h2h_kernel: int = 5,
        negative_slope: float = 0.2,
        gate_act: bool = False,
        zero_input: bool = False,
    ) -> None:
        super().__init__()
        if hidden_channels < 1 or input_channels < 0:
            raise ValueError(f"need hidden_channels >= 1 and input_channels >= 0, got {hidden_channels}, {input_channels}")
        if i2h_kernel % 2 == 0 or h2h_kernel % 2 == 0:
            raise ValueError(f"kernels must be odd (same padding), got i2h={i2h_kernel}, h2h={h2h_kernel}")
        self.input_channels = input_channels
        self.hidden_channels = hidden_channels
        self.i2h = nn.Conv2d(input_channels, 3 * hidden_channels, i2h_kernel, padding=i2h_kernel // 2) if input_channels else None
        self.h2h = nn.Conv2d(hidden_channels, 3 * hidden_channels, h2h_kernel, padding=h2h_kernel // 2)
        self.act = nn.LeakyReLU(negative_slope)
        self.gate_act = bool(gate_act)
        self.zero_input = bool(zero_input)
        self.candidate = nn.Identity()

    def forward(self, x: Optional[Tensor], h: Optional[Tensor] = None, size: Optional[tuple[int, int, int]] = None) -> Tensor:
        """One time step. ``x``: ``(B, input_channels, H, W)`` or None (no input);
        ``h``: ``(B, hidden_channels, H, W)`` or None (zeros; then ``x`` or ``size=(B, H, W)``
        gives the shape)."""
        if h is None:
            if x is not None:
                b, _, height, width = x.shape
                ref = x
            elif size is not None:
                (b, height, width), ref = size, self.h2h.weight
            else:
                raise ValueError("ConvGRUCell: neither an input nor a state nor a size to start from")
            h = ref.new_zeros(b, self.hidden_channels, height, width)
        conv_h = self.h2h(h)
        if self.gate_act:
            conv_h = self.act(conv_h)
        h_r, h_u, h_h = conv_h.chunk(3, dim=1)
        if x is None and self.zero_input and self.i2h is not None:
            x = h.new_zeros(h.shape[0], self.input_channels, *h.shape[2:])
        if x is not None:
            if self.i2h is None:
                raise ValueError("ConvGRUCell built with input_channels=0 got an input")
            conv_x = self.i2h(x)
            if self.gate_act:
                conv_x = self.act(conv_x)
            x_r, x_u, x_h = conv_x.chunk(3, dim=1)
            r, u = torch.sigmoid(x_r + h_r), torch.sigmoid(x_u + h_u)
            cand = self.act(x_h + r * h_h)
        else:
            r, u = torch.sigmoid(h_r), torch.sigmoid(h_u)
            cand = self.act(r * h_h)
        cand = self.candidate(cand)
        return u * h + (1.0 - u) * cand


def _tuple(value: Sequence[int], n: int, name: str) -> tuple[int, ...]:
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} needs {n} values (one per stage), got {value}")
    return value


class EncoderForecaster(nn.Module):
    r"""The encoder-forecaster ConvGRU (Shi et al. 2017), configurable enough to be both the
    HKO-7 benchmark's and the MEmeL authors' network (module docstring; build them by
    name with :func:`build_arch`).

    Encoder stage ``i`` (``encoder.<i>``): a strided ``Conv2d`` (``conv_channels[i]``,
    ``conv_kernels[i]``, ``conv_strides[i]``, ``conv_paddings[i]``) with leaky ReLU, then a
    :class:`ConvGRUCell` (``hidden_channels[i]``) unrolled over the ``T_in`` input frames.
    Forecaster stage ``i`` (``forecaster.<i>``, run from the top ``i = n-1`` down to 0): a
    ConvGRU cell started from encoder cell ``i``'s last state (the top one gets no input;
    with ``top_zero_input`` it runs its input convolution on zeros, ``top_input_channels``
    wide), then a ``ConvTranspose2d`` (kernel ``up_kernels[i]``, default
    ``conv_kernels[i]``; stride and padding of encoder conv ``i``) to ``up_channels[i]``
    maps at the resolution below (output size taken from the encoder, so any frame size
    works). ``up_channels`` defaults to ``conv_channels[0]`` for stage 0 and
    ``hidden_channels[i-1]`` above. The head turns the bottom stage's ``up_channels[0]``
    maps into one frame per step: a 3x3 conv + leaky ReLU + 1x1 conv (``head="conv3x3"``)
    or a single 1x1 conv (``head="conv1x1"``); no output activation (the benchmark's
    "direct" output). ``gate_act`` puts leaky ReLUs on every cell's input/hidden
    convolutions (:class:`ConvGRUCell`).

    Defaults: the benchmark's network (widths 8/64, 192/192, 192/192; i2h 3x3, h2h 5x5,
    5x5, 3x3), set for 120x120 frames: feature maps 40x40, 20x20, 10x10.

    ``forward(x, out_frames)``: ``x`` ``(T_in, B, C, H, W)`` -> ``(T_out, B, 1, H, W)``.
    The candidate taps are ``encoder.<i>.cell.candidate`` and
    ``forecaster.<i>.cell.candidate`` (:meth:`candidate_names`).

    Example:
        >>> net = EncoderForecaster(conv_channels=(4, 8, 8), hidden_channels=(8, 8, 8))
        >>> net(torch.zeros(5, 2, 1, 120, 120), out_frames=3).shape
        torch.Size([3, 2, 1, 120, 120])
        >>> [tuple(s) for s in net.feature_sizes(120, 120)]
        [(40, 40), (20, 20), (10, 10)]
    """

    HEADS = ("conv3x3", "conv1x1")

    def __init__(
        self,
        in_channels: int = 1,
        conv_channels: Sequence[int] = (8, 192, 192),
        hidden_channels: Sequence[int] = (64, 192, 192),
        conv_kernels: Sequence[int] = (5, 3, 3),
        conv_strides: Sequence[int] = (3, 2, 2),
        conv_paddings: Sequence[int] = (1, 1, 1),
        i2h_kernels: Sequence[int] = (3, 3, 3),
        h2h_kernels: Sequence[int] = (5, 5, 3),
        negative_slope: float = 0.2,
        up_channels: Optional[Sequence[int]] = None,
        up_kernels: Optional[Sequence[int]] = None,
        gate_act: bool = False,
        top_zero_input: bool = False,
        top_input_channels: Optional[int] = None,
        head: str = "conv3x3",
    ) -> None:
        super().__init__()
        n = len(hidden_channels)
        if n < 1:
            raise ValueError("need at least one stage")
        if head not in self.HEADS:
            raise ValueError(f"head must be one of {self.HEADS}, got {head!r}")
        conv_channels = _tuple(conv_channels, n, "conv_channels")
        hidden_channels = _tuple(hidden_channels, n, "hidden_channels")
        kernels = _tuple(conv_kernels, n, "conv_kernels")
        strides = _tuple(conv_strides, n, "conv_strides")
        paddings = _tuple(conv_paddings, n, "conv_paddings")
        i2h = _tuple(i2h_kernels, n, "i2h_kernels")
        h2h = _tuple(h2h_kernels, n, "h2h_kernels")
        default_up = (conv_channels[0],) + hidden_channels[:-1]
        ups = default_up if up_channels is None else _tuple(up_channels, n, "up_channels")
        up_k = kernels if up_kernels is None else _tuple(up_kernels, n, "up_kernels")
        self.num_stages = n
        self.encoder = nn.ModuleList()
        for i in range(n):
            c_in = in_channels if i == 0 else hidden_channels[i - 1]
            stage = nn.Module()
            stage.down = nn.Sequential(
                nn.Conv2d(c_in, conv_channels[i], kernels[i], strides[i], paddings[i]), nn.LeakyReLU(negative_slope)
            )
            stage.cell = ConvGRUCell(conv_channels[i], hidden_channels[i], i2h[i], h2h[i], negative_slope, gate_act)
            self.encoder.append(stage)
        self.forecaster = nn.ModuleList()
        for i in range(n):
            stage = nn.Module()
            if i == n - 1:  # the top cell gets no input, or zeros through its input conv
                c_in = (top_input_channels or hidden_channels[i]) if top_zero_input else 0
            else:  # input: the stage above, upsampled
                c_in = ups[i + 1]
            stage.cell = ConvGRUCell(c_in, hidden_channels[i], i2h[i], h2h[i], negative_slope, gate_act,
                                     zero_input=top_zero_input and i == n - 1)
            stage.up = nn.ConvTranspose2d(hidden_channels[i], ups[i], up_k[i], strides[i], paddings[i])
            stage.act = nn.LeakyReLU(negative_slope)
            self.forecaster.append(stage)
        if head == "conv3x3":
            self.head = nn.Sequential(
                nn.Conv2d(ups[0], ups[0], 3, padding=1), nn.LeakyReLU(negative_slope), nn.Conv2d(ups[0], 1, 1)
            )
        else:
            self.head = nn.Sequential(nn.Conv2d(ups[0], 1, 1))

    def candidate_names(self) -> list[str]:
        """Names (relative to this module) of the six (2n) candidate-state taps."""
        return [f"encoder.{i}.cell.candidate" for i in range(self.num_stages)] + [
            f"forecaster.{i}.cell.candidate" for i in range(self.num_stages)
        ]

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """``(H, W)`` of each encoder stage's feature maps (= its ConvGRU state) for an input
        of ``height x width``."""
        out = []
        for stage in self.encoder:
            conv = stage.down[0]
            (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
            height, width = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
            out.append((height, width))
        return out

    @staticmethod
    def _per_frame(module: nn.Module, x: Tensor, **kwargs) -> Tensor:
        t, b = x.shape[:2]
        y = module(x.reshape(t * b, *x.shape[2:]), **kwargs)
        return y.reshape(t, b, *y.shape[1:])

    def forward(self, x: Tensor, out_frames: int = 10) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"EncoderForecaster expects (T_in, B, C, H, W) frames, got shape {tuple(x.shape)}")
        sizes: list[tuple[int, int]] = []
        states: list[Tensor] = []
        for stage in self.encoder:
            sizes.append(tuple(x.shape[-2:]))
            x = self._per_frame(stage.down, x)
            h = None
            outs = []
            for t in range(x.shape[0]):
                h = stage.cell(x[t], h)
                outs.append(h)
            states.append(h)
            x = torch.stack(outs)
        y: Optional[Tensor] = None
        for i in reversed(range(self.num_stages)):
            stage = self.forecaster[i]
            h = states[i]
            outs = []
            for t in range(out_frames):
                h = stage.cell(None if y is None else y[t], h)
                outs.append(h)
            hs = torch.stack(outs)
            t_out, b = hs.shape[:2]
            up = stage.up(hs.reshape(t_out * b, *hs.shape[2:]), output_size=list(sizes[i]))
            y = stage.act(up).reshape(t_out, b, *up.shape[1:])
        return self._per_frame(self.head, y)


# ---------------------------------------------------------------------------- registry
ARCHITECTURES: dict[str, Callable[..., EncoderForecaster]] = {}


def register_arch(fn: Callable[..., EncoderForecaster]) -> Callable[..., EncoderForecaster]:
    """Register a builder under its function name (decorator)."""
    ARCHITECTURES[fn.__name__] = fn
    return fn


def list_archs() -> list[str]:
    """Names :func:`build_arch` accepts."""
    return sorted(ARCHITECTURES)


def build_arch(name: str, **kwargs: Any) -> EncoderForecaster:
    """The network registered as ``name``, its defaults overridden by ``kwargs``.

    Example:
        >>> net = build_arch("memel_paper")
        >>> [tuple(s) for s in net.feature_sizes(120, 120)]
        [(24, 24), (8, 8), (4, 4)]
        >>> build_arch("memel_paper", hidden_channels=(8, 8, 8), conv_channels=(4, 8, 8), up_channels=(4, 8, 8),
        ...            top_input_channels=8)(torch.zeros(2, 1, 1, 120, 120), out_frames=2).shape
        torch.Size([2, 1, 1, 120, 120])
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown nowcasting architecture {name!r}; choose one of {list_archs()}")
    try:
        return ARCHITECTURES[name](**kwargs)
    except TypeError as exc:  # an argument EncoderForecaster does not have
        raise ValueError(f"architecture {name!r}: {exc}") from None


@register_arch
def hko7_benchmark(**kwargs: Any) -> EncoderForecaster:
    """The HKO-7 benchmark's encoder-forecaster: :class:`EncoderForecaster`'s defaults."""
    return EncoderForecaster(**kwargs)


MEMEL_PAPER = dict(
    conv_channels=(8, 64, 192),  # conv1 1->8, conv2 64->64, conv3 192->192
    hidden_channels=(64, 192, 192),
    conv_kernels=(7, 5, 3),
    conv_strides=(5, 3, 2),  # 120 -> 24 -> 8 -> 4
    conv_paddings=(1, 1, 1),
    i2h_kernels=(3, 3, 3),
    h2h_kernels=(5, 5, 3),
    up_channels=(8, 192, 192),  # deconv3 64->8, deconv2 192->192, deconv1 192->192
    up_kernels=(7, 5, 4),
    gate_act=True,
    top_zero_input=True,
    top_input_channels=192,
    head="conv1x1",
)


@register_arch
def memel_paper(**kwargs: Any) -> EncoderForecaster:
    """The MEmeL authors' ConvGRU (``physics/exp/net_params.py``, ``endegru120_*``): see the
    module docstring; ``MEMEL_PAPER`` holds its settings."""
    return EncoderForecaster(**{**MEMEL_PAPER, **kwargs})
