"""Deepfake detection training pipeline: align -> SSL -> k-fold fine-tune -> predict."""

__version__ = "0.1.0"
