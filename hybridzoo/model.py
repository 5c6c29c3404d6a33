"""HybridModel: a timm backbone plus a projection head that lands in a geometry."""
from __future__ import annotations

import copy
from pathlib import Path

import timm
import torch
from torch import nn

from .errors import ImageInputError
from .geometry import Geometry
from .heads import ProjectionHead

__all__ = ["HybridModel", "PREPROCESSING_KEYS", "CONFIG_FORMAT_VERSION"]

#: The preprocessing fields of timm's ``pretrained_cfg`` that travel with the weights.
PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "fixed_input_size")
#: Bumped when config.json changes incompatibly.
CONFIG_FORMAT_VERSION = 1


def _probe_feature_dim(backbone: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Width of the pooled features, measured by one forward pass.

    ``num_features`` is not always what ``num_classes=0`` models return (MobileNetV3, LCNet and EfficientNet-style
    head convs return ``head_hidden_size``), so the head is sized from the real output.
    """
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        width = backbone(torch.zeros(1, *input_size)).shape[-1]
    backbone.train(was_training)
    return int(width)


def _preprocessing(backbone: nn.Module, backbone_kwargs: dict, overrides: dict | None) -> dict:
    """timm-style preprocessing config: the backbone's defaults, adapted to the ``in_chans`` and ``img_size``
    it was built with (timm leaves its ``pretrained_cfg`` at the defaults), then ``overrides``."""
    cfg = {k: backbone.pretrained_cfg[k] for k in PREPROCESSING_KEYS if k in backbone.pretrained_cfg}
    in_chans = int(backbone_kwargs.get("in_chans", 3))
    img_size = backbone_kwargs.get("img_size")
    spatial = cfg.get("input_size", (3, 224, 224))[1:] if img_size is None else timm.layers.to_2tuple(img_size)
    cfg["input_size"] = (in_chans, *spatial)
    for key in ("mean", "std"):
        # ImageNet statistics are per RGB channel; another channel count gets their average per channel.
        values = tuple(cfg.get(key, (0.5,) * in_chans))
        if len(values) != in_chans:
            cfg[key] = (sum(values) / len(values),) * in_chans
    cfg.update(overrides or {})
    if cfg["input_size"][0] != in_chans:
        raise ValueError(f"preprocessing input_size {tuple(cfg['input_size'])} has {cfg['input_size'][0]} channel(s) "
                         f"but the backbone is built with in_chans={in_chans}: make them agree")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


class HybridModel(nn.Module):
    """A timm backbone (``num_classes=0``, pooled features) followed by a :class:`ProjectionHead`.

    ``model(images)``: (N, C, H, W) -> points of ``model.geometry`` (N, P), fp32.
    ``model.forward_features(images)``: (N, C, H, W) -> pooled backbone features (N, F).
    ``model.pretrained_cfg``: timm's preprocessing fields, so ``timm.data.resolve_data_config({}, model=model)``
    and ``timm.data.create_transform(**cfg)`` build the right transform.

    Build one with :func:`hybridzoo.create_model` or :func:`hybridzoo.load` rather than directly.
    """

    def __init__(self, backbone: str, head: dict, backbone_kwargs: dict | None = None,
                 preprocessing: dict | None = None, name: str | None = None):
        super().__init__()
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.name = name or f"{backbone}-custom"
        try:
            self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, **self.backbone_kwargs)
        except RuntimeError as err:
            if "Unknown model" not in str(err):
                raise
            raise ValueError(f"unknown timm backbone {backbone!r}: see timm.list_models() for the names") from None
        self.in_chans = int(self.backbone_kwargs.get("in_chans", 3))
        self._preprocessing_overrides = dict(preprocessing or {})
        self.pretrained_cfg = _preprocessing(self.backbone, self.backbone_kwargs, self._preprocessing_overrides)
        self.feature_dim = _probe_feature_dim(self.backbone, self.pretrained_cfg["input_size"])
        self.head = ProjectionHead(self.feature_dim, **head)

    @property
    def geometry(self) -> Geometry:
        """The geometry the outputs live in (``Lorentz``, ``Euclidean``, ``Product``, ...)."""
        return self.head.geometry

    @property
    def default_cfg(self) -> dict:
        """Alias of :attr:`pretrained_cfg`, for code written against older timm."""
        return self.pretrained_cfg

    def check_images(self, images: torch.Tensor) -> None:
        """Raise :class:`ImageInputError` naming the fix unless ``images`` is a float (N, C, H, W) batch."""
        if not isinstance(images, torch.Tensor):
            raise ImageInputError(f"{self.name} takes a torch.Tensor of images, not {type(images).__name__}; "
                                  f"build one with hybridzoo.create_transform(model) or use hybridzoo.extract")
        if images.ndim == 3 and images.shape[0] == self.in_chans:
            raise ImageInputError(f"{self.name} takes a batch (N, {self.in_chans}, H, W); got one image of shape "
                                  f"{tuple(images.shape)}: add the batch dimension with images.unsqueeze(0)")
        if images.ndim != 4:
            raise ImageInputError(f"{self.name} takes images of shape (N, {self.in_chans}, H, W); got shape "
                                  f"{tuple(images.shape)}")
        if images.shape[1] != self.in_chans:
            hint = ("channels-last data? permute with images.permute(0, 3, 1, 2)" if images.shape[-1] == self.in_chans
                    else f"convert the images to {self.in_chans} channel(s) (e.g. PIL .convert('RGB')), or build "
                         f"the model with in_chans={images.shape[1]}")
            raise ImageInputError(f"{self.name} expects {self.in_chans} input channel(s); got images of shape "
                                  f"{tuple(images.shape)}: {hint}")
        expected_size = tuple(self.pretrained_cfg["input_size"][1:])
        if self.pretrained_cfg.get("fixed_input_size") and tuple(images.shape[2:]) != expected_size:
            raise ImageInputError(f"{self.name} takes images of exactly {expected_size[0]}x{expected_size[1]} pixels; "
                                  f"got {tuple(images.shape[2:])}: resize with hybridzoo.create_transform(model), "
                                  f"or build the model with img_size={images.shape[2]}")
        weight_dtype = next(self.backbone.parameters()).dtype
        if (images.is_floating_point() and images.dtype != weight_dtype
                and not torch.is_autocast_enabled(images.device.type)):
            raise ImageInputError(f"{self.name} has {weight_dtype} weights but got {images.dtype} images: cast them "
                                  f"with images.to({weight_dtype}), or run under torch.autocast for mixed precision")
        if not images.is_floating_point():
            raise ImageInputError(f"{self.name} takes float images normalised with mean {self.pretrained_cfg['mean']}"
                                  f" and std {self.pretrained_cfg['std']}; got dtype {images.dtype}: use "
                                  f"hybridzoo.create_transform(model) on PIL images")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> pooled backbone features (N, F)."""
        self.check_images(images)
        return self.backbone(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, F) -> points (N, P), fp32."""
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> points (N, P), fp32."""
        return self.forward_head(self.forward_features(images))

    @property
    def config(self) -> dict:
        """Everything needed to rebuild this model (written to config.json by ``save_pretrained``)."""
        return {
            "format_version": CONFIG_FORMAT_VERSION,
            "name": self.name,
            "backbone": self.backbone_name,
            "backbone_kwargs": copy.deepcopy(self.backbone_kwargs),
            "feature_dim": self.feature_dim,
            "head": self.head.to_config(),
            "geometry": self.geometry.to_config(),
            "output_dim": self.head.out_dim,
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in self.pretrained_cfg.items()},
        }

    @classmethod
    def from_config(cls, config: dict) -> "HybridModel":
        """Rebuild (randomly initialised) from :attr:`config`; ``geometry``/``output_dim`` are descriptive."""
        return cls(backbone=config["backbone"], head=config["head"], backbone_kwargs=config.get("backbone_kwargs"),
                   preprocessing=config.get("preprocessing"), name=config.get("name"))

    def save_pretrained(self, save_directory: str | Path, results: dict | None = None,
                        training: dict | None = None) -> Path:
        """Write config.json, model.safetensors and a README.md model card (each atomically). See hub.py."""
        from .hub import save_pretrained

        return save_pretrained(self, save_directory, results=results, training=training)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload :meth:`save_pretrained` output to a Hub repo; returns the commit info. See hub.py."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)
