"""Moved out of the fusion server's package: offline training lives in ``training/``."""

raise SystemExit(
    "python -m services.fusion.evaluate has moved; run: python -m training.heads evaluate --head <dir>"
)
