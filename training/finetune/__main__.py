"""Entry point of ``python -m training.finetune``."""

from training.finetune.cli import main

raise SystemExit(main())
