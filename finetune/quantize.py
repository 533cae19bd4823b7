"""Quantise a nuclei network to int8 for ONNX Runtime (the slide path's fast network, 2-4x faster on a CPU).

    python -m pathasst.finetune.quantize --weights tools/weights/nuclei_net_20x.pt --data ../shared/data/consep_train

Writes ``NAME.int8.onnx`` beside the weights (:func:`pathasst.tools.backends.nuclei_net.int8_model_path`): the
network exported to ONNX in float32, then ONNX Runtime's static quantisation (QDQ, int8 weights per output channel,
uint8 activations) with activation ranges calibrated on CoNSeP **training** tiles at the network's resolution
(never the validation sources 2 and 11 nor the held-out sources 16-26). The file records the sha256 of the weights
it came from (``source_sha256``), which the loader checks, and the calibration tiles.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["calibration_tiles", "main", "quantize_nuclei_net"]


def calibration_tiles(data_dir: Path, n: int) -> list[str]:
    """``n`` training tiles spread over the training source images (no validation or held-out source)."""
    from pathasst.finetune.nuclei_data import DEFAULT_VAL_SOURCES
    from pathasst.finetune.nuclei_pixel import source_image, train_tiles

    names = [t for t in train_tiles(data_dir) if source_image(t) not in DEFAULT_VAL_SOURCES]
    if not names:
        raise FileNotFoundError(f"no CoNSeP training tiles in {data_dir}")
    step = max(1, len(names) // n)
    return names[::step][:n]


def quantize_nuclei_net(weights: Path, data_dir: Path, out: Path | None = None, n_tiles: int = 24) -> dict[str, Any]:
    """Write the int8 model of ``weights`` (see the module docstring); returns what was done."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from pathasst.core.weights import file_sha256
    from pathasst.finetune.nuclei_data import load_samples
    from pathasst.finetune.nuclei_eval import TILE_MPP
    from pathasst.tools.backends.nuclei_net import NucleiNet, int8_model_path
    from pathasst.tools.backends.runtime import predict_padded

    weights = Path(weights)
    out = Path(out) if out else int8_model_path(weights)
    net = NucleiNet.load(weights, "--weights")
    c = net.config
    names = calibration_tiles(Path(data_dir), n_tiles)
    samples = load_samples(Path(data_dir), names, TILE_MPP / c.mpp)
    inputs: list[dict[str, np.ndarray]] = []

    def capture(x: Any) -> Any:  # the network's input exactly as inference pads and normalises it
        inputs.append({"x": x.numpy().copy()})
        return x[:, :1]

    for s in samples:
        predict_padded([s.rgb], capture, c.multiple, c.mean, c.std, net.device)

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        fp32.write_bytes(net.onnx_bytes())
        q = Path(tmp) / "int8.onnx"
        quantize_static(str(fp32), str(q), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        model = onnx.load(str(q))
    info = {"source": weights.name, "source_sha256": file_sha256(weights), "calibration_tiles": json.dumps(names),
            "quantisation": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations"}
    for k, v in info.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    onnx.save(model, str(tmp_out))
    tmp_out.replace(out)
    return {"out": str(out), "bytes": out.stat().st_size, "calibration_tiles": len(names), "source": weights.name}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m pathasst.finetune.quantize", description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, required=True, help="nuclei-net checkpoint (.pt)")
    p.add_argument("--data", type=Path, required=True, help="CoNSeP folder (consep_train layout): calibration tiles")
    p.add_argument("--out", type=Path, help="default: NAME.int8.onnx beside the weights")
    p.add_argument("--tiles", type=int, default=24, help="calibration tiles")
    a = p.parse_args(argv)
    result = quantize_nuclei_net(a.weights, a.data, a.out, a.tiles)
    json.dump(result, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    main()
