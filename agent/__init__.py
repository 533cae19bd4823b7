"""Running the agent: the composition root (``system``), batch runs and their executors, outputs, single-tool
predictions, the demo, the MCP and LangGraph servers, FHIR export. Imports the graph and everything below it."""
