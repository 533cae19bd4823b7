"""PathAsst graphs package."""
