"""Moved out of the fusion server's package: offline training lives in ``training/``."""

raise SystemExit(
    "python -m services.fusion.train has moved; run: python -m training.heads train --data <file> (or: python -m training.heads demo --data <demo dir>)"
)
