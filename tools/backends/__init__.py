"""Deep-learning backends of the pathology tools (imported lazily by the tools, never at tool import)."""
