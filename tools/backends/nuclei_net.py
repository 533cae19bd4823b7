"""The project's own nuclei network (HoVer-Net-style heads on a small U-Net) and its inference.

Weights (``PATHASST_NUCLEI_WEIGHTS``, or the shipped default ``tools/weights/nuclei_net.pt``):
``torch.save({"state_dict": fp16_state_dict, "config": {...}}, "nuclei_net.pt")``, or a plain state dict with a
sidecar ``nuclei_net.json`` holding the config. Trained with ``python -m pathasst.finetune.nuclei_net``. Config keys:

==================  ========  =====================================================================================
key                 required  meaning
==================  ========  =====================================================================================
``architecture``    yes       ``"pathasst-nuclei-net"`` (how a file is recognised as this network's)
``mpp``             yes       microns per pixel the network was trained at (images are resampled to it)
``widths``          no        channels per level, full resolution first (default ``[16, 32, 64, 128, 192]``)
``members``         no        an ensemble: one ``widths`` list per member network (state dict keys
                              ``members.I.*``); their probabilities and HV maps are averaged (``widths`` unused),
                              and with ``post.member_vote`` its nuclei are voted on (``nuclei_post.vote_instances``)
``type_classes``    no        names of the type head's channels after background (default CoNSeP's four)
``mean``, ``std``   no        per-channel normalisation of RGB in [0, 1] (default 0.5 / 0.5)
``tile_size``       no (256)  tile side for inference at ``mpp`` (a multiple of 16)
``overlap``         no (48)   overlap of neighbouring tiles (maps are blended across it)
``post``            no        post-processing parameters, see :class:`~pathasst.tools.backends.nuclei_post.PostParams`
==================  ========  =====================================================================================

Outputs per pixel: NP (2 logits: background / nucleus), HV (2 channels, tanh: horizontal and vertical distance to
the nucleus centre, -1..1 per nucleus, as in HoVer-Net, Graham et al. 2019) and TP (1 + len(type_classes) logits).
Post-processing (:mod:`~pathasst.tools.backends.nuclei_post`): nucleus mask = P(nucleus) > ``np_threshold``; the
Sobel gradients of the (smoothed) HV maps are large between touching nuclei, so markers = mask minus high-gradient pixels (opened, small ones
dropped); marker-controlled watershed of the gradient inside the mask. The gradient is either min-max normalised per
image (HoVer-Net's ``"minmax"``) or used as it is (``"absolute"``), see :class:`PostParams`. Each nucleus's type is the
majority vote of the type head's argmax over its pixels (background excluded). An ensemble with
``post.member_vote = k`` also segments each member's own maps and keeps the nuclei that at least k of these
predictions and the averaged one agree on (``nuclei_post.vote_instances``).

Inference on the CPU (``PATHASST_NUCLEI_RUNTIME``): by default the network is exported to ONNX in memory when first
used and run by ONNX Runtime in float32 (torch's maps to 1e-5; the tool about 1.4x faster on the 2-core machine);
``torch`` runs the module itself, which ``PATHASST_NUCLEI_PRECISION=bfloat16`` and CUDA devices always use.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import ImageData
from pathasst.core.settings import Settings
from pathasst.core.weights import Checkpoint, file_sha256, load_torch_file, read_checkpoint
from pathasst.tools.backends.blocks import conv_blocks
from pathasst.tools.backends.nuclei_post import EDGE_MODES, PostParams, instance_types, instances_from_maps
from pathasst.tools.backends.runtime import (
    configure_threads,
    cpu_native_bf16,
    load_state,
    predict_padded,
    torch_device,
    working_image,
)
from pathasst.tools.backends.tiling import dense_tiled

log = logging.getLogger(__name__)

__all__ = [
    "SHIPPED_NET_WEIGHTS",
    "SLIDE_NET_WEIGHTS",
    "ARCHITECTURE",
    "DEFAULT_TYPE_CLASSES",
    "NucleiNet",
    "NucleiNetConfig",
    "NucleiPrediction",
    "PRECISIONS",
    "RUNTIMES",
    "build_nuclei_ensemble",
    "build_nuclei_net",
    "int8_model_path",
    "is_nuclei_net_checkpoint",
    "to_image_labels",
]

#: the project's own nuclei network, shipped with the package (see tools/weights/NUCLEI_MODEL_CARD.md)
SHIPPED_NET_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "nuclei_net.pt"
#: its 20x network for whole slides (same card, "Slide path"): one small network working at 0.5 um/px
SLIDE_NET_WEIGHTS = SHIPPED_NET_WEIGHTS.with_name("nuclei_net_20x.pt")


def int8_model_path(weights: Path) -> Path:
    """Where the int8 ONNX model of a nuclei-net checkpoint lives: beside it, ``NAME.int8.onnx``."""
    return Path(weights).with_suffix(".int8.onnx")


ARCHITECTURE = "pathasst-nuclei-net"
#: arithmetic of inference (Settings.nuclei_precision)
PRECISIONS = ("float32", "bfloat16")
#: what runs the network on the CPU (Settings.nuclei_runtime); on a CUDA device torch always does. 'auto':
#: onnxruntime for float32 when onnx and onnxruntime are installed (same maps to 1e-5, faster here), else torch
RUNTIMES = ("auto", "torch", "onnxruntime")


def _onnx_available() -> bool:
    from importlib.util import find_spec

    return find_spec("onnx") is not None and find_spec("onnxruntime") is not None


#: CoNSeP's merged type classes (codes 1..4 of ``types/NAME.json``)
DEFAULT_TYPE_CLASSES = ("Other", "Inflammatory", "Epithelial", "Spindle")
DEFAULT_WIDTHS = (16, 32, 64, 128, 192)


# ---- the network ---------------------------------------------------------------------------------------------------
def build_nuclei_net(widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS, n_types: int = 5) -> Any:
    """The network module (torch imported here, not at module import). Input ``(N, 3, H, W)`` with H, W multiples of
    ``2 ** (len(widths) - 1)``; output ``(N, 4 + n_types, H, W)``: NP logits (2), HV (2, tanh), TP logits."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    cbr, Res = conv_blocks()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = list(widths)
            self.depth = len(w) - 1
            self.stem = nn.Sequential(cbr(3, w[0]), cbr(w[0], w[0]))
            self.down = nn.ModuleList(
                [nn.Sequential(cbr(w[i], w[i + 1], 3, stride=2), Res(w[i + 1], sep=i + 1 >= 3)) for i in range(self.depth)]
            )
            self.bottom = Res(w[-1], sep=True)
            self.lat = nn.ModuleList([cbr(w[i + 1] + w[i], w[i], 1) for i in range(self.depth)])
            self.dec = nn.ModuleList([Res(w[i], sep=i >= 3) if i > 0 else cbr(w[0], w[0]) for i in range(self.depth)])

            def head(cout: int) -> nn.Sequential:
                return nn.Sequential(cbr(w[0], w[0]), nn.Conv2d(w[0], cout, 1))

            self.np_head, self.hv_head, self.tp_head = head(2), head(2), head(n_types)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = [self.stem(x)]
            for d in self.down:
                skips.append(d(skips[-1]))
            y = self.bottom(skips[-1])
            for i in reversed(range(self.depth)):
                y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
                y = self.dec[i](self.lat[i](torch.cat([y, skips[i]], dim=1)))
            return torch.cat([self.np_head(y), torch.tanh(self.hv_head(y)), self.tp_head(y)], dim=1)

    return Net()


def build_nuclei_ensemble(members: list[list[int]], n_types: int = 5) -> Any:
    """Several networks as one module: NP and TP probabilities averaged over the members (returned as log
    probabilities, so a softmax gives the averages back exactly) and HV maps averaged; same output layout as
    :func:`build_nuclei_net`, followed by each member's own NP logits and HV maps when ``with_members`` is set.
    Members of different widths and depths decorrelate best."""
    import torch
    from torch import nn

    class Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList([build_nuclei_net(w, n_types) for w in members])

            #: also return each member's NP logits and HV maps (4 channels per member, after the averaged output)
            self.with_members = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = [m(x).float() for m in self.members]
            np_p = torch.stack([torch.softmax(o[:, :2], 1) for o in outs]).mean(0)
            tp_p = torch.stack([torch.softmax(o[:, 4:], 1) for o in outs]).mean(0)
            hv = torch.stack([o[:, 2:4] for o in outs]).mean(0)
            own = [o[:, :4] for o in outs] if self.with_members else []
            return torch.cat([torch.log(np_p.clamp_min(1e-12)), hv, torch.log(tp_p.clamp_min(1e-12)), *own], dim=1)

    return Ensemble()


@dataclass
class NucleiNetConfig:
    """The metadata a nuclei-net checkpoint carries (see the module docstring)."""

    mpp: float = 0.25
    widths: list[int] = field(default_factory=lambda: list(DEFAULT_WIDTHS))
    members: list[list[int]] = field(default_factory=list)  # non-empty: an ensemble of these widths
    type_classes: list[str] = field(default_factory=lambda: list(DEFAULT_TYPE_CLASSES))
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    tile_size: int = 256
    overlap: int = 48
    post: PostParams = field(default_factory=PostParams)
    architecture: str = ARCHITECTURE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @property
    def multiple(self) -> int:
        return 2 ** (max(len(w) for w in (self.members or [self.widths])) - 1)

    def build(self) -> Any:
        """The (untrained) module this config describes: one network, or the ensemble of ``members``."""
        n_types = 1 + len(self.type_classes)
        return build_nuclei_ensemble(self.members, n_types) if self.members else build_nuclei_net(self.widths, n_types)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> NucleiNetConfig:
        arch = ckpt.config.get("architecture")
        if arch != ARCHITECTURE:
            raise WeightsError(
                f"weights {ckpt.where()} are not a {ARCHITECTURE} checkpoint (config 'architecture' = {arch!r})"
            )
        mpp = ckpt.require("mpp", (int, float))
        if not 0.05 <= float(mpp) <= 8:
            raise WeightsError(f"nuclei net {ckpt.where()}: mpp {mpp} outside 0.05..8")
        cfg = cls(mpp=float(mpp))

        def ok(w: Any) -> bool:
            return isinstance(w, list) and 2 <= len(w) <= 7 and all(isinstance(c, int) and c >= 1 for c in w)

        if "widths" in ckpt.config:
            widths = ckpt.require("widths", list)
            if not ok(widths):
                raise WeightsError(f"nuclei net {ckpt.where()}: 'widths' must be 2..7 positive ints, got {widths!r}")
            cfg.widths = list(widths)
        if ckpt.config.get("members"):
            members = ckpt.require("members", list)
            if not all(ok(w) for w in members):
                raise WeightsError(
                    f"nuclei net {ckpt.where()}: 'members' must be a list of widths lists (2..7 positive ints each), "
                    f"got {members!r}"
                )
            cfg.members = [list(w) for w in members]
        if "type_classes" in ckpt.config:
            tc = ckpt.require("type_classes", list)
            if not all(isinstance(c, str) for c in tc) or len(set(tc)) != len(tc):
                raise WeightsError(f"nuclei net {ckpt.where()}: 'type_classes' must be distinct names, got {tc!r}")
            cfg.type_classes = list(tc)
        for key in ("mean", "std"):
            if key in ckpt.config:
                v = ckpt.require(key, list)
                if len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
                    raise WeightsError(f"nuclei net {ckpt.where()}: {key!r} must have 3 numbers")
                setattr(cfg, key, [float(x) for x in v])
        for key in ("tile_size", "overlap"):
            if key in ckpt.config:
                setattr(cfg, key, ckpt.require(key, int))
        if cfg.tile_size % cfg.multiple or not 0 <= cfg.overlap < cfg.tile_size:
            raise WeightsError(
                f"nuclei net {ckpt.where()}: tile_size must be a multiple of {cfg.multiple} and 0 <= overlap < "
                f"tile_size (got {cfg.tile_size}, {cfg.overlap})"
            )
        if "post" in ckpt.config:
            post = ckpt.require("post", dict)
            known = set(PostParams.__dataclass_fields__)
            unknown = sorted(set(post) - known)
            if unknown:
                raise WeightsError(f"nuclei net {ckpt.where()}: unknown 'post' keys {unknown}; known: {sorted(known)}")
            try:
                cfg.post = PostParams(**{k: type(getattr(PostParams(), k))(v) for k, v in post.items()})
            except (TypeError, ValueError) as exc:
                raise WeightsError(f"nuclei net {ckpt.where()}: bad 'post' parameters: {exc}") from exc
            negative = [k for k in ("min_marker_px", "min_area_px", "unmarked_min_px") if getattr(cfg.post, k) < 0]
            if negative:
                raise WeightsError(f"nuclei net {ckpt.where()}: post {negative} must be >= 0 pixels")
            if cfg.post.member_vote and not 1 <= cfg.post.member_vote <= len(cfg.members) + 1:
                n = len(cfg.members)
                where = f"an ensemble of {n} (1..{n + 1})" if n else "a single network"
                raise WeightsError(f"nuclei net {ckpt.where()}: post 'member_vote' {cfg.post.member_vote} is "
                                   f"impossible for {where}; 0 turns the vote off")
            if cfg.post.edge_mode not in EDGE_MODES:
                raise WeightsError(
                    f"nuclei net {ckpt.where()}: post 'edge_mode' must be one of {list(EDGE_MODES)}, "
                    f"got {cfg.post.edge_mode!r}"
                )
        return cfg


def is_nuclei_net_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a torch file whose config names this architecture (read with ``weights_only=True``)."""
    import json

    try:
        raw = load_torch_file(path, str(path))
    except WeightsError:  # any unreadable file is simply "not ours"
        return False
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        return raw["config"].get("architecture") == ARCHITECTURE
    side = Path(path).with_suffix(".json")
    if isinstance(raw, dict) and side.is_file():
        try:
            return json.loads(side.read_text(encoding="utf-8")).get("architecture") == ARCHITECTURE
        except (OSError, ValueError, AttributeError):
            return False
    return False


# ---- the loaded model ------------------------------------------------------------------------------------------------
@dataclass
class NucleiPrediction:
    """Instance labels (1..N) of the analysed image and each instance's type index (1..T; 0 = unknown)."""

    labels: np.ndarray
    types: dict[int, int]
    type_classes: list[str]


class NucleiNet:
    """A loaded nuclei network: :meth:`maps` (stitched NP/HV/TP maps) and :meth:`segment` (instances + types)."""

    def __init__(
        self, model: Any, config: NucleiNetConfig, device: Any, source: str = "", precision: str = "float32",
        runtime: str = "torch",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"nuclei network precision must be one of {PRECISIONS}, not {precision!r}")
        if runtime not in RUNTIMES:
            raise ValueError(f"nuclei network runtime must be one of {RUNTIMES}, not {runtime!r}")
        if runtime == "onnxruntime" and precision == "bfloat16":
            raise ValueError("nuclei network: bfloat16 is a torch arithmetic; with runtime 'onnxruntime' (float32) "
                             "leave PATHASST_NUCLEI_PRECISION at float32")
        self.model = model
        self.config = config
        self.device = device
        #: an ensemble voting on its members' nuclei returns their own maps too (before any ONNX export)
        self.n_member_maps = len(config.members) if config.members and config.post.member_vote else 0
        if hasattr(model, "with_members"):
            model.with_members = bool(self.n_member_maps)
        self.source = source
        #: 'bfloat16': autocast + channels-last tensors (Settings.nuclei_precision); weights stay float32
        self.precision = precision
        if precision == "bfloat16":
            import torch

            self.model = model.to(memory_format=torch.channels_last)
            if getattr(device, "type", "cpu") == "cpu" and cpu_native_bf16() is False:
                log.warning("PATHASST_NUCLEI_PRECISION=bfloat16 on a CPU without native bfloat16 (no AVX512-BF16 / "
                            "AMX in /proc/cpuinfo): torch emulates it, expect the nuclei network to run several times "
                            "slower than with float32")
        #: 'onnxruntime': the network exported to ONNX once and run by ONNX Runtime (float32) on the CPU
        if runtime == "auto":
            runtime = "onnxruntime" if precision == "float32" and _onnx_available() else "torch"
        self.runtime = runtime if getattr(device, "type", "cpu") == "cpu" else "torch"
        self._session: Any = None
        self._session_lock = threading.Lock()
        self._onnx_file: Path | None = None  # an int8 model run instead of the exported float32 graph
        #: ONNX Runtime's memory arena: off by default (it kept ~540 MB through a large window's post-processing);
        #: a slide run, whose windows are all one size, turns it on (:meth:`predict_window`)
        self.memory_arena = False

    @classmethod
    def load(cls, path: Path, setting: str, settings: Settings = None, fmt: str = "pytorch",
             int8: bool = False) -> NucleiNet:
        """Load a checkpoint (WeightsError naming ``setting`` when it is not a nuclei-net checkpoint). ``int8``: run
        its int8 ONNX model (:func:`int8_model_path`, written by ``python -m pathasst.finetune.quantize``) instead."""
        configure_threads(settings)
        ckpt = read_checkpoint(Path(path), setting, fmt)  # type: ignore[arg-type]
        cfg = NucleiNetConfig.from_checkpoint(ckpt)
        model = cfg.build()
        ckpt.state_dict = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
        shape = f"an ensemble of widths {cfg.members}" if cfg.members else f"widths {cfg.widths}"
        load_state(model, ckpt, f"a {ARCHITECTURE} with {shape} and {len(cfg.type_classes)} types")
        device = torch_device()
        precision = str(getattr(settings, "nuclei_precision", None) or "float32")
        runtime = str(getattr(settings, "nuclei_runtime", None) or "auto")
        net = cls(model.to(device).eval(), cfg, device, source=str(path), precision=precision, runtime=runtime)
        if int8:
            net.use_int8(int8_model_path(Path(path)), setting)
        return net

    def use_int8(self, onnx_path: Path, setting: str = "int8 model") -> None:
        """Run the int8 ONNX model at ``onnx_path`` (quantised from this checkpoint: its ``source_sha256`` must be the
        checkpoint file's, so a retrained checkpoint never runs a stale model) in ONNX Runtime."""
        if not _onnx_available():
            raise RuntimeError("the int8 nuclei network needs the packages onnx and onnxruntime")
        if not Path(onnx_path).is_file():
            raise WeightsError(f"{setting}: no int8 model {onnx_path}; write it with python -m pathasst.finetune.quantize "
                               f"--weights {self.source}")
        import onnx

        meta = {m.key: m.value for m in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        if self.source and meta.get("source_sha256") != file_sha256(Path(self.source)):
            raise WeightsError(f"{setting}: {onnx_path} was quantised from other weights than {self.source} "
                               "(source_sha256 differs); quantise it again")
        self.runtime, self.precision, self._onnx_file = "onnxruntime", "int8", Path(onnx_path)
        with self._session_lock:
            self._session = None

    @classmethod
    def from_module(cls, model: Any, config: NucleiNetConfig, device: Any = None) -> NucleiNet:
        """Wrap an in-memory module (e.g. during training); ``device``: where its weights are (default: the CPU)."""
        import torch

        return cls(model.eval(), config, torch.device(device or "cpu"))

    def keep_member_maps(self, on: bool = True) -> None:
        """Have :meth:`maps` append (or stop appending) each ensemble member's own maps, whatever ``post.member_vote``
        says (the post-processing search tries the vote on them)."""
        if on and not self.config.members:
            raise ValueError("member maps need an ensemble checkpoint (config 'members')")
        with self._session_lock:
            self.n_member_maps = len(self.config.members) if on else 0
            if hasattr(self.model, "with_members"):
                self.model.with_members = on
            self._session = None  # an exported graph has the old outputs

    def describe(self) -> str:
        c = self.config
        n = sum(int(p.numel()) for p in self.model.parameters())
        shape = f"ensemble of {len(c.members)}, widths {c.members}" if c.members else f"widths {c.widths}"
        if c.members and c.post.member_vote:
            shape += f", nuclei voted {c.post.member_vote} of {len(c.members) + 1}"
        bf16 = f", {self.precision}" if self.precision in ("bfloat16", "int8") else ""
        ort = ", onnxruntime" if self.runtime == "onnxruntime" else ""
        return f"{ARCHITECTURE} ({n / 1e6:.2f} M params, {shape}, {len(c.type_classes)} types, {c.mpp} um/px{bf16}{ort})"

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (e.g. sent to Ray tile tasks): the ONNX session and its lock are rebuilt where it lands."""
        state = dict(self.__dict__)
        state["_session"], state["_session_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._session_lock = threading.Lock()

    def onnx_session(self) -> Any:
        """The ONNX Runtime session of this network (exported in memory on first use, float32, any batch and tile
        size; threads as torch's intra-op pool). ``RuntimeError`` naming the setting when onnx/onnxruntime is missing."""
        with self._session_lock:
            if self._session is None:
                self._session = self._export_onnx()
        return self._session

    def _export_onnx(self) -> Any:
        import torch

        try:
            import onnx  # noqa: F401  (torch's exporter needs it)
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeError(f"PATHASST_NUCLEI_RUNTIME=onnxruntime needs the packages onnx and onnxruntime "
                               f"({exc}); set PATHASST_NUCLEI_RUNTIME=torch") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = self.memory_arena  # off: ~540 MB less through post-processing, 5-20 % slower
        model = str(self._onnx_file) if self._onnx_file is not None else self.onnx_bytes()
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    def onnx_bytes(self) -> bytes:
        """The float32 network as an ONNX graph (any batch and tile size)."""
        import io
        import warnings

        import torch

        size = 2 * self.config.multiple
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(self.model.eval(), torch.zeros(1, 3, size, size), buf, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
                              opset_version=17, dynamo=False)
        return buf.getvalue()

    def _predict(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        def forward(x: Any) -> Any:
            if self.runtime == "onnxruntime":
                out = torch.from_numpy(self.onnx_session().run(None, {"x": x.contiguous().numpy()})[0])
            elif self.precision == "bfloat16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    out = self.model(x.contiguous(memory_format=torch.channels_last))
                out = out.float()
            else:
                out = self.model(x).float()
            base = 4 + 1 + len(self.config.type_classes)
            own = [t for k in range(base, out.shape[1], 4)
                   for t in (torch.softmax(out[:, k : k + 2], 1)[:, 1:2], out[:, k + 2 : k + 4])]
            return torch.cat([torch.softmax(out[:, :2], 1)[:, 1:2], out[:, 2:4], torch.softmax(out[:, 4:base], 1),
                              *own], 1)

        c = self.config
        return predict_padded(tiles, forward, c.multiple, c.mean, c.std, self.device)

    def maps(self, rgb: np.ndarray, tile: int | None = None, overlap: int | None = None, batch: int = 4,
             dtype: np.dtype | type = np.float32) -> np.ndarray:
        """Stitched ``(3 + 1 + T, H, W)``: P(nucleus), H, V, then type probabilities (background first); an ensemble
        voting on its members' nuclei (``post.member_vote``) appends each member's own P(nucleus), H, V."""
        c = self.config
        channels = 3 + 1 + len(c.type_classes) + 3 * self.n_member_maps
        return dense_tiled(rgb, self._predict, channels, tile or c.tile_size, c.overlap if overlap is None else overlap,
                           batch, dtype)

    def predict_window(self, rgb: np.ndarray) -> np.ndarray:
        """The maps of :meth:`maps` for one window in a single pass (no inner tiling or blending): what a slide run
        calls on each of its equally sized, haloed tiles."""
        return self._predict([np.asarray(rgb)[..., :3]])[0]

    def segment_array(self, rgb: np.ndarray, post: PostParams | None = None) -> NucleiPrediction:
        """Instances and types of an RGB array already at the model's mpp. The maps are stitched in float16 (half the
        memory of a large window; the same nuclei as float32 on 40 held-out CoNSeP tiles and a 1000 px field)."""
        return self.instances(self.maps(np.asarray(rgb)[..., :3], dtype=np.float16), post)

    def instances(self, maps: np.ndarray, post: PostParams | None = None) -> NucleiPrediction:
        """Instances and types of this network's maps (:meth:`maps` or :meth:`predict_window`)."""
        n_tp = 1 + len(self.config.type_classes)
        labels = instances_from_maps(maps, post or self.config.post, n_tp)
        return NucleiPrediction(labels, instance_types(labels, maps[3 : 3 + n_tp]), list(self.config.type_classes))

    def segment(self, image: ImageData, post: PostParams | None = None) -> NucleiPrediction:
        """Instances (uint32 labels 1..N with the shape of ``image``) and their types; resampled via the model mpp."""
        work = working_image(image, self.config.mpp)
        pred = self.segment_array(work.pixels, post)
        return to_image_labels(pred.labels, pred.types, image.shape, pred.type_classes)


def to_image_labels(labels: np.ndarray, types: dict[int, int], shape: tuple[int, int],
                    type_classes: list[str]) -> NucleiPrediction:
    """Labels at the working resolution brought to ``shape`` (nearest neighbour) and renumbered 1..N (resampling
    may drop small nuclei), with the types following their nuclei."""
    from skimage.transform import resize

    if labels.shape != tuple(shape):
        labels = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int64)
    ids = np.unique(labels[labels > 0])
    new = np.where(labels > 0, np.searchsorted(ids, labels) + 1, 0).astype(np.uint32)
    return NucleiPrediction(new, {k + 1: types[int(old)] for k, old in enumerate(ids) if int(old) in types},
                            list(type_classes))
