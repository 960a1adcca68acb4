"""Shipped geodata (built by scripts/build_*.py); see shapes/README.md."""
