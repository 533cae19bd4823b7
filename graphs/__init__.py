"""The case graph (LangGraph): retrieve -> plan <-> act -> report, over planning, the tools and the case library."""
