"""The pushsite benchmark: `python -m bench` (see bench/README.md); never part of the tests."""
