"""PathAsst agent package."""
