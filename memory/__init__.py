"""PathAsst memory package."""
