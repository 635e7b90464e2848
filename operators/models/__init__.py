"""Deepfake face classifiers: checkpoint files (``checkpoints``) and scorers (``scorers``)."""
