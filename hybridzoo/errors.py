"""Errors raised by hybridzoo. Each message names the problem and the fix."""
from __future__ import annotations

__all__ = ["HybridZooError", "UnknownModelError", "WeightsUnavailableError", "UnsafeWeightsError",
           "CorruptWeightsError", "ChecksumMismatchError", "ArchitectureMismatchError", "ImageInputError",
           "DataNotFoundError"]


class HybridZooError(Exception):
    """Base class of every hybridzoo error."""


class UnknownModelError(HybridZooError, ValueError):
    """A model name that is neither in the zoo, nor a local folder, nor an ``hf-hub:`` id."""


class WeightsUnavailableError(HybridZooError, OSError):
    """Pretrained weights were asked for but none are published, cached or reachable."""


class UnsafeWeightsError(HybridZooError, OSError):
    """Only pickle weights (``.bin``, ``.pt``, ...) were found; hybridzoo never unpickles them."""


class CorruptWeightsError(HybridZooError, OSError):
    """A weights file that is not a readable safetensors file (truncated, corrupt or foreign)."""


class ChecksumMismatchError(HybridZooError, OSError):
    """A weights file whose sha256 differs from the one the zoo registry records."""


class ArchitectureMismatchError(HybridZooError, ValueError):
    """Weights whose tensor names or shapes do not fit the architecture in the config."""


class ImageInputError(HybridZooError, ValueError):
    """Images of the wrong shape, channel count or dtype, or image files that cannot be read."""


class DataNotFoundError(HybridZooError, FileNotFoundError):
    """A dataset, path, split or Hub dataset that is not there (or not reachable); the message says how to get it."""
