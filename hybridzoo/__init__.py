"""hybridzoo: timm backbones with Euclidean, Lorentz (hyperbolic) and product-space heads.

>>> import hybridzoo
>>> hybridzoo.list_models("*-lorentz")
>>> model = hybridzoo.load("resnet18-lorentz", pretrained=False)
>>> points = model(images)                 # (N, 129) Lorentz points, time first
>>> model.geometry.pairwise_distance(points, points)
"""
__version__ = "0.1.0"

from . import geometry
from .errors import (ArchitectureMismatchError, ChecksumMismatchError, CorruptWeightsError, HybridZooError,
                     ImageInputError, UnknownModelError, UnsafeWeightsError, WeightsUnavailableError)
from .extract import ImageFolderDataset, create_transform, extract, save_features
from .heads import HEAD_PRESETS, ProjectionHead
from .model import HybridModel
from .zoo import create_model, get_model_config, list_models, load, register_model

__all__ = [
    "__version__", "geometry", "HybridModel", "ProjectionHead", "HEAD_PRESETS",
    "list_models", "load", "create_model", "get_model_config", "register_model",
    "extract", "save_features", "create_transform", "ImageFolderDataset",
    "HybridZooError", "UnknownModelError", "WeightsUnavailableError", "UnsafeWeightsError", "CorruptWeightsError",
    "ChecksumMismatchError", "ArchitectureMismatchError", "ImageInputError",
]
