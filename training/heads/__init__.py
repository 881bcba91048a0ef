"""Fusion heads on the encoders' embeddings: training (``train``), evaluation (``evaluate``) and
the command line ``python -m training.heads {train,demo,evaluate}``."""
