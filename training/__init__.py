"""Training, evaluation and data loading for the face-analysis models.

Depends on ``models/`` (architectures, preprocessing, checkpoints); nothing in ``app/`` imports it.
"""
