"""ConvGRU cell and the encoder-forecaster network of the HKO-7 benchmark (Shi et al. 2017).

Plain ``nn.Module`` s, no Lightning. Frames are time-first ``(T, B, C, H, W)``.
"""
from __future__ import annotations

from typing import Optional, Sequence

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

    ``act`` is a leaky ReLU (slope ``negative_slope``, 0.2 as in the benchmark). The
    candidate state goes through ``self.candidate`` (an ``nn.Identity``): a forward hook
    on it (``MEmeLCallback`` tap ``<cell>.candidate``) sees ``h~`` of shape
    ``(B, hidden_channels, H, W)`` at every time step, before the update gate mixes it
    with the old state (SPEC section 6).

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
        h_r, h_u, h_h = self.h2h(h).chunk(3, dim=1)
        if x is not None:
            if self.i2h is None:
                raise ValueError("ConvGRUCell built with input_channels=0 got an input")
            x_r, x_u, x_h = self.i2h(x).chunk(3, dim=1)
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
    r"""The encoder-forecaster ConvGRU of the HKO-7 benchmark.

    Encoder stage ``i`` (``encoder.<i>``): a strided ``Conv2d`` (``conv_channels[i]``,
    ``conv_kernels[i]``, ``conv_strides[i]``, ``conv_paddings[i]``) with leaky ReLU, then a
    :class:`ConvGRUCell` (``hidden_channels[i]``) unrolled over the ``T_in`` input frames.
    Forecaster stage ``i`` (``forecaster.<i>``, run from the top ``i = n-1`` down to 0): a
    ConvGRU cell started from encoder cell ``i``'s last state (the top one gets no input),
    then a ``ConvTranspose2d`` mirroring encoder conv ``i`` back to the resolution below
    (output size taken from the encoder, so any frame size works). A 3x3 and a 1x1
    convolution turn the bottom stage's ``conv_channels[0]`` maps into one frame per step
    (no output activation, as the benchmark's "direct" output).

    Defaults (benchmark widths 8/64, 192/192, 192/192; i2h 3x3, h2h 5x5, 5x5, 3x3) are set
    for 120x120 frames: feature maps 40x40, 20x20, 10x10.

    ``forward(x, out_frames)``: ``x`` ``(T_in, B, C, H, W)`` -> ``(T_out, B, 1, H, W)``.
    The candidate taps are ``encoder.<i>.cell.candidate`` and
    ``forecaster.<i>.cell.candidate`` (:meth:`candidate_names`).

    Example:
        >>> net = EncoderForecaster(conv_channels=(4, 8, 8), hidden_channels=(8, 8, 8))
        >>> net(torch.zeros(5, 2, 1, 120, 120), out_frames=3).shape
        torch.Size([3, 2, 1, 120, 120])
    """

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
    ) -> None:
        super().__init__()
        n = len(hidden_channels)
        if n < 1:
            raise ValueError("need at least one stage")
        conv_channels = _tuple(conv_channels, n, "conv_channels")
        hidden_channels = _tuple(hidden_channels, n, "hidden_channels")
        kernels = _tuple(conv_kernels, n, "conv_kernels")
        strides = _tuple(conv_strides, n, "conv_strides")
        paddings = _tuple(conv_paddings, n, "conv_paddings")
        i2h = _tuple(i2h_kernels, n, "i2h_kernels")
        h2h = _tuple(h2h_kernels, n, "h2h_kernels")
        self.num_stages = n
        self.encoder = nn.ModuleList()
        for i in range(n):
            c_in = in_channels if i == 0 else hidden_channels[i - 1]
            stage = nn.Module()
            stage.down = nn.Sequential(
                nn.Conv2d(c_in, conv_channels[i], kernels[i], strides[i], paddings[i]), nn.LeakyReLU(negative_slope)
            )
            stage.cell = ConvGRUCell(conv_channels[i], hidden_channels[i], i2h[i], h2h[i], negative_slope)
            self.encoder.append(stage)
        self.forecaster = nn.ModuleList()
        for i in range(n):
            stage = nn.Module()
            c_in = 0 if i == n - 1 else hidden_channels[i]  # input: the stage above, upsampled
            stage.cell = ConvGRUCell(c_in, hidden_channels[i], i2h[i], h2h[i], negative_slope)
            c_out = conv_channels[0] if i == 0 else hidden_channels[i - 1]
            stage.up = nn.ConvTranspose2d(hidden_channels[i], c_out, kernels[i], strides[i], paddings[i])
            stage.act = nn.LeakyReLU(negative_slope)
            self.forecaster.append(stage)
        self.head = nn.Sequential(
            nn.Conv2d(conv_channels[0], conv_channels[0], 3, padding=1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(conv_channels[0], 1, 1),
        )

    def candidate_names(self) -> list[str]:
        """Names (relative to this module) of the six (2n) candidate-state taps."""
        return [f"encoder.{i}.cell.candidate" for i in range(self.num_stages)] + [
            f"forecaster.{i}.cell.candidate" for i in range(self.num_stages)
        ]

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
