"""A rectangle of a source image in level-0 pixels: how tools, readers and the case library name a region."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Region"]


class Region(BaseModel):
    """A rectangle in level-0 pixel coordinates of the source image."""

    model_config = ConfigDict(extra="forbid")
    x: int = Field(..., ge=0, description="Left edge, level-0 pixels.")
    y: int = Field(..., ge=0, description="Top edge, level-0 pixels.")
    width: int = Field(..., gt=0, description="Width, level-0 pixels.")
    height: int = Field(..., gt=0, description="Height, level-0 pixels.")
