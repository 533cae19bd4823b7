"""Convolution building blocks shared by the project's networks (nuclei, tissue, mitosis): conv-BN-ReLU and the
residual block. Module attribute names are part of the shipped checkpoints' state-dict keys: keep them."""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["conv_blocks"]


@cache
def conv_blocks() -> tuple[Any, Any]:
    """``(cbr, Res)``: ``cbr(cin, cout, k=3, stride=1, groups=1)`` = Conv2d (no bias) + BatchNorm + ReLU;
    ``Res(c, sep)`` = residual block of two 3x3 convolutions, depthwise-separable when ``sep`` (torch imported here,
    on first use)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class Res(nn.Module):
        """Residual block: 3x3 conv, 3x3 conv (depthwise-separable when ``sep``)."""

        def __init__(self, c: int, sep: bool) -> None:
            super().__init__()
            if sep:
                self.body = nn.Sequential(cbr(c, c, 3, groups=c), cbr(c, c, 1), cbr(c, c, 3, groups=c))
                self.out = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
            else:
                self.body = cbr(c, c)
                self.out = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(x + self.out(self.body(x)))

    return cbr, Res
