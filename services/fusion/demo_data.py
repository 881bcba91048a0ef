"""Moved out of the fusion server's package: offline training lives in ``training/``."""

raise SystemExit(
    "python -m services.fusion.demo_data has moved; run: python -m training.demo_data --out <dir>"
)
