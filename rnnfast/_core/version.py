"""The package version (pyproject.toml's; tests/test_packaging.py checks that they agree)."""
VERSION = "0.1.0"
