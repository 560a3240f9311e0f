"""One adapter per Google service. Adapters never decide."""
