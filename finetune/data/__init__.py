"""Training data: PathCap / PathInstruct readers and validators, and tool-invocation samples from the catalogue."""

from pathasst.finetune.data.readers import (
    CaptionPair,
    Conversation,
    DataError,
    RecordProblem,
    read_conversations,
    read_pathcap,
)
from pathasst.finetune.data.toolcalls import ToolSample, generate_tool_samples, overlap_report

__all__ = [
    "CaptionPair",
    "Conversation",
    "DataError",
    "RecordProblem",
    "ToolSample",
    "generate_tool_samples",
    "overlap_report",
    "read_conversations",
    "read_pathcap",
]
