"""Domain layer: value types, enumerations and outcomes. Pure Python, no I/O."""
