"""BatchNorm statistics for averaged (EMA) weights, shared by the trainers.

The running statistics of an exponential moving average of the weights, averaged along the training trajectory, do
not fit the averaged weights (the tissue network's eval-mode outputs collapsed to one class with them). The trainers
keep an EMA of the parameters only and re-estimate the statistics with :func:`recalibrate_bn` before each validation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["recalibrate_bn"]


def recalibrate_bn(model: Any, images: list[np.ndarray], forward: Callable[[Any], Any] | None = None,
                   batch: int = 32) -> None:
    """Re-estimate every BatchNorm layer's running statistics as plain averages over ``images`` (RGB uint8 arrays of
    one shape, normalised as the trainers do: ``(x / 255 - 0.5) / 0.5``), then put the model in eval mode.
    ``forward`` runs the part of the model that holds the BatchNorm layers (default: the model)."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    run = forward or model
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            arr = np.stack(images[i : i + batch])
            run((torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()
