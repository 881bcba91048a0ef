"""The audio encoder service: clip embeddings and AudioSet classification (YAMNet by default)."""
