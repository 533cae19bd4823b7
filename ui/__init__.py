"""PathAsst ui package."""
