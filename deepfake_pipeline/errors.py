"""Typed errors. Library code raises these; the CLIs turn them into one line and exit code 2."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class for every error the pipeline reports to the user."""


class ConfigError(PipelineError):
    """Unknown key, wrong type or missing value in a config file or a --set override."""


class DataValidationError(PipelineError):
    """The dataset does not follow the Kaggle layout contract."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} data problem(s):\n  {shown}{more}")


class ImageReadError(PipelineError):
    """An image file could not be decoded (zero bytes, not an image, corrupt, too large)."""

    def __init__(self, path: object, reason: str = ""):
        # reason is optional so DataLoader workers can re-raise it with one message argument
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if reason else self.path)


class StaleOutputError(PipelineError):
    """Outputs on disk were made from other settings or inputs than the ones asked for now."""


class CheckpointError(PipelineError):
    """A checkpoint is missing, unsafe (pickled code) or does not match the model."""


class SubmissionError(PipelineError):
    """A submission would be incomplete or invalid."""
