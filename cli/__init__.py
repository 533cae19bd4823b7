"""The `pathasst` command: batch runs, single-tool predictions, evaluations, the MCP server and the review app."""
