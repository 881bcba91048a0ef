"""Offline work, apart from the servers: data readers, in-process embedders, training loops,
reports and the training commands (``python -m training.heads``, ``python -m training.finetune``).

Nothing under ``services/`` imports this package; training imports the serving code it must
match exactly (the encoder backends, the image path, the head format).
"""
