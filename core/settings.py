"""One settings object for the whole system, read from the environment (prefix ``PATHASST_``) and ``.env``.

Nothing here is read at import time: call :func:`get_settings` (cached) or build ``Settings()`` explicitly.
Every field is documented in ``.env.example``; a test keeps the two in sync.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PlannerName", "Settings", "get_settings", "is_loopback"]

PlannerName = Literal["hybrid", "rules", "llamacpp", "openai"]


def _default_cache() -> Path:
    return Path.home() / ".cache" / "pathasst"


class Settings(BaseSettings):
    """All knobs of PathAsst. Environment variables are ``PATHASST_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix="PATHASST_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_parse_none_str="",  # an empty variable means "not set" (None) for optional fields
    )

    # --- planner -------------------------------------------------------------------------------
    planner: PlannerName = Field(
        "hybrid",
        description="Planner backend: hybrid (rules + MiniLM neighbours of the tool-invocation data) | rules | llamacpp | openai.",
    )
    hybrid_fallback: Literal["neighbours", "tuned", "neighbours_then_tuned"] = Field(
        "neighbours",
        description="What the hybrid planner asks about a sentence the rules cannot place: neighbours (MiniLM k-NN "
        "vote over the tool-invocation data) | tuned (the llamacpp planner: Gemma 3 270M + the shipped LoRA) | "
        "neighbours_then_tuned (the tuned model where no example is similar enough to vote).",
    )
    llamacpp_model_path: Path | None = Field(
        None, description="GGUF file for the llamacpp planner; empty = Gemma 3 270M assembled into cache_dir."
    )
    llamacpp_lora_path: Path | None = Field(None, description="Optional LoRA adapter GGUF applied on top of the model.")
    llamacpp_use_shipped_adapter: bool = Field(
        True, description="With the default Gemma model, apply the LoRA planner adapter shipped in finetune/adapters."
    )
    llamacpp_n_ctx: int = Field(2048, ge=256, description="Context length for the llamacpp planner.")
    llamacpp_threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp (empty = all cores).")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    openai_api_key: SecretStr = Field(SecretStr("not-needed"), description="API key for the openai planner.")
    openai_model: str = Field("pathasst", description="Model name sent to the OpenAI-compatible endpoint.")
    openai_timeout_s: float = Field(60.0, gt=0, description="Per-request timeout for the openai planner.")
    openai_max_retries: int = Field(
        2, ge=0, description="Retries (exponential back-off) for the openai planner on connection errors, 408/409/429/5xx."
    )
    openai_max_concurrency: int = Field(
        4, ge=1, description="Most requests in flight to the openai endpoint from this process (all threads together)."
    )
    step_budget: int = Field(6, ge=1, le=64, description="Maximum planner<->tool rounds per question.")

    # --- data and outputs ----------------------------------------------------------------------
    cases_root: Path | None = Field(None, description="Root folder of case folders (paths may not escape it).")
    output_dir: Path = Field(Path("out"), description="Where reports are written.")
    cache_dir: Path = Field(default_factory=_default_cache, description="Cache folder (assembled GGUF, etc.).")
    chroma_path: Path = Field(
        default_factory=lambda: _default_cache() / "chroma", description="Embedded Chroma case library folder."
    )
    chroma_host: str | None = Field(None, description="Chroma server host; set to use the client/server mode.")
    chroma_port: int = Field(8000, description="Chroma server port.")
    mcp_token: SecretStr | None = Field(
        None,
        description="Bearer token that `pathasst mcp --transport http` requires of every request (empty = none; "
        "set it before binding anything but loopback).",
    )
    mcp_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (or addresses) clients may use to reach `pathasst mcp --transport http` besides the "
        "loopback names and the bind address (Host/Origin checks; JSON list, e.g. '[\"pathology.lab\"]').",
    )
    similar_k: int = Field(3, ge=0, le=50, description="Similar cases retrieved per case by the graph (0 = off).")
    conversations_path: Path | None = Field(
        None, description="SQLite file of review conversations (empty = <cache_dir>/conversations.sqlite)."
    )

    # --- batch execution -----------------------------------------------------------------------
    executor: Literal["local", "ray"] = Field("local", description="Where batch cases run: local | ray.")
    workers: int = Field(1, ge=1, le=256, description="Local worker processes for batch runs (1 = in this process).")
    ray_address: str | None = Field(
        None, description="Ray cluster address (e.g. ray://head:10001 or auto); empty = start a local Ray instance."
    )
    ray_local_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (empty = all cores).")
    ray_num_cpus_per_case: float = Field(1.0, gt=0, description="CPUs reserved by each Ray case task.")
    ray_memory_per_case_mb: int | None = Field(
        None, ge=1, description="Memory (MB) reserved by each Ray case task (empty = no reservation)."
    )
    ray_max_retries: int = Field(1, ge=0, description="Ray retries of a case task whose worker died.")
    ray_num_cpus_per_tile: float = Field(1.0, gt=0, description="CPUs reserved by each Ray tile task of a large image.")
    ray_tile_min_batches: int = Field(
        4, ge=1, description="A tiled tool call with at least this many tile batches sends them out as Ray tasks."
    )

    # --- limits --------------------------------------------------------------------------------
    max_image_pixels: int = Field(
        120_000_000, ge=1, description="Refuse plain images above this many pixels (decompression-bomb guard)."
    )
    max_region_pixels: int = Field(
        16_777_216, ge=65_536, description="Largest region (pixels) one tool call analyses, of a slide or a plain image (beyond it: "
        "the window with the most tissue, or the whole downsampled for thumbnail-level tools)."
    )
    max_file_bytes: int = Field(4 * 1024**3, ge=1, description="Refuse input files larger than this many bytes.")
    call_timeout_s: float | None = Field(
        900.0, gt=0, description="A tool call stops at its next tile batch after this many seconds and fails with the "
        "reason (MCP server and batch runs; empty = no limit).")
    max_concurrent_calls: int = Field(
        2, ge=1, le=64, description="Tool calls the MCP server runs at once, across all tools; more wait their turn "
        "(at most the call time limit).")
    default_mpp: float | None = Field(
        None, gt=0, description="Microns per pixel assumed for plain images when neither case.yaml nor the file says."
    )
    torch_threads: int | None = Field(None, ge=1, description="Threads for torch-based tools (empty = default).")
    nuclei_precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Arithmetic of the shipped/own nuclei network (torch runtime): bfloat16 made the tool 1.7x faster on an "
        "AVX512-BF16 CPU but 6x slower on an AVX2-only CPU, which emulates it; same held-out accuracy (tools/weights/NUCLEI_MODEL_CARD.md).",
    )
    nuclei_runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="What runs the shipped/own nuclei network on the CPU: onnxruntime (exported to ONNX in memory at "
        "load, float32: the same maps as torch to 1e-5, the tool 1.3-1.4x faster on a 2-core AVX2 CPU), torch, or auto (onnxruntime unless "
        "nuclei_precision is bfloat16, which is torch's). On a GPU torch always runs it.",
    )

    # --- weights, one per deep tool (empty = embedded backend or 'not configured') ---------------
    nuclei_weights: Path | None = Field(None, description="Nuclei network weights (deep nuclei_segmentation backend).")
    ihc_weights: Path | None = Field(None, description="YOLO cell-detector .pt for ihc_quantification.")
    mitosis_weights: Path | None = Field(None, description="YOLO .pt for mitosis_detection.")
    pathclip_weights: Path | None = Field(None, description="PathCLIP open_clip checkpoint (pathclip-base.pt).")
    tissue_probe_weights: Path | None = Field(
        None, description="Optional linear-probe head on PathCLIP embeddings for tissue_classification."
    )
    tumor_seg_weights: Path | None = Field(None, description="U-Net state dict for tumor_segmentation.")
    slide_mil_weights: Path | None = Field(None, description="ABMIL head state dict for slide_classification.")
    sam_weights: Path | None = Field(None, description="segment-anything checkpoint for region_segmentation.")

    def resolved_output(self, out: Path | None = None) -> Path:
        return Path(out) if out is not None else self.output_dir


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once on first use."""
    return Settings()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (servers bind there unless told otherwise)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
