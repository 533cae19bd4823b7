"""PathAsst tools package."""
