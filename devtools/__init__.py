"""Helpers shared by tests/, integration_tests/ and bench/ (not part of the installed
plugin): repository paths, torchrun runs and their logs, parallel-parity set-up, small
models and memory inputs. Importable from the repository root (pytest's pythonpath and
`python -m bench.X` both put it on the path)."""
