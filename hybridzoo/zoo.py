"""The zoo registry: one JSON file per model in ``models/``, and the functions that turn names into models.

A zoo entry (``models/resnet50-lorentz.json``) is a :attr:`HybridModel.config` plus a ``weights`` record::

    "weights": {"hub_repo": "org/resnet50-lorentz", "revision": "<commit sha>", "sha256": "<of model.safetensors>"}

``hub_repo`` is null until weights are published.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import inspect
import json
from importlib import resources
from pathlib import Path

from .errors import UnknownModelError, WeightsUnavailableError
from .geometry import GEOMETRIES
from .heads import MLP_KEYS, TANGENT_KEYS, resolve_head_config
from .hub import (HUB_PREFIX, download_from_hub, find_weights, load_weights, parse_hub_id, read_config,
                  read_config_file)
from .model import HybridModel

__all__ = ["list_models", "get_model_config", "register_model", "create_model", "load", "apply_overrides"]

_REGISTRY: dict[str, dict] = {}
_ZOO_LOADED = False

#: Override keys that belong to the head (MLP, guards, any geometry option); all others go to timm.
_HEAD_KEYS = frozenset({*MLP_KEYS, "factors", *TANGENT_KEYS} | {
    p for cls in GEOMETRIES.values() for p in inspect.signature(cls).parameters} | {"dim"})


def _load_zoo() -> None:
    """Read the packaged zoo configs once (``models/*.json``, shipped as ``hybridzoo.zoo_configs``)."""
    global _ZOO_LOADED
    if _ZOO_LOADED:
        return
    for entry in sorted(resources.files("hybridzoo.zoo_configs").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            config = json.loads(entry.read_text())
            _REGISTRY.setdefault(config["name"], config)
    _ZOO_LOADED = True


def register_model(config: dict, overwrite: bool = False) -> None:
    """Add a zoo entry (a dict in the form of ``models/*.json``) under ``config["name"]``."""
    _load_zoo()
    name = config.get("name")
    if not name or "backbone" not in config or "head" not in config:
        raise ValueError("a zoo entry needs 'name', 'backbone' and 'head'")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"zoo entry {name!r} exists; pass overwrite=True to replace it")
    _REGISTRY[name] = copy.deepcopy(config)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted zoo names, optionally filtered with a shell-style pattern (``"resnet*"``, ``"*-lorentz"``)."""
    _load_zoo()
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_model_config(name: str) -> dict:
    """A copy of the zoo entry ``name``; unknown names raise :class:`UnknownModelError` with close matches."""
    _load_zoo()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}: not a zoo name, a local folder or an 'hf-hub:org/repo' "
                                f"id.{hint} See hybridzoo.list_models() for all {len(_REGISTRY)} zoo names.")
    return copy.deepcopy(_REGISTRY[name])


def apply_overrides(config: dict, **overrides) -> dict:
    """Route overrides: head options (``curvature``, ``clip_radius``, ``hidden_dim``, ``factors``, ...) to the head,
    ``preprocessing`` to the preprocessing, everything else (``img_size``, ``in_chans``, ``drop_path_rate``, ...)
    to ``timm.create_model``."""
    config = copy.deepcopy(config)
    head = {k: v for k, v in overrides.items() if k in _HEAD_KEYS}
    if head:
        config["head"] = resolve_head_config(config["head"], **head)
    if "preprocessing" in overrides:
        config["preprocessing"] = {**config.get("preprocessing", {}), **overrides["preprocessing"]}
    backbone = {k: v for k, v in overrides.items() if k not in _HEAD_KEYS and k != "preprocessing"}
    if backbone:
        config["backbone_kwargs"] = {**config.get("backbone_kwargs", {}), **backbone}
        # Input size and channels follow from the new backbone options unless given explicitly.
        if "input_size" not in overrides.get("preprocessing", {}):
            config.get("preprocessing", {}).pop("input_size", None)
    return config


def create_model(backbone: str, head: str | dict = "lorentz", *, name: str | None = None,
                 backbone_kwargs: dict | None = None, preprocessing: dict | None = None,
                 **head_kwargs) -> HybridModel:
    """A randomly initialised model from any timm backbone and a head preset or config.

    >>> model = create_model("resnet18", head="lorentz", curvature=0.5, clip_radius=2.3)
    >>> hybrid = create_model("resnet18", head="hybrid")     # E × H product, by config alone
    """
    head_config = resolve_head_config(head, **head_kwargs)
    head_name = head if isinstance(head, str) else "custom"
    return HybridModel(backbone, head_config, backbone_kwargs=backbone_kwargs, preprocessing=preprocessing,
                       name=name or f"{backbone}-{head_name}")


def load(name_or_path: str | Path, pretrained: bool = True, *, cache_dir: str | Path | None = None,
         endpoint: str | None = None, token: str | None = None, **overrides) -> HybridModel:
    """Build a model from a zoo name, a folder written by ``save_pretrained``, a model config file (``.json``, the
    form of ``models/*.json``; ``pretrained=False`` only), or ``hf-hub:org/repo[@revision]``.

    ``pretrained=False`` gives the architecture with random weights. ``overrides`` change the config
    (see :func:`apply_overrides`); with pretrained weights they must keep the architecture.
    ``cache_dir``, ``endpoint`` and ``token`` go to huggingface_hub (defaults: its environment variables).
    """
    hub = dict(cache_dir=cache_dir, endpoint=endpoint, token=token)
    name = str(name_or_path)
    expected_sha256 = None
    if name.startswith(HUB_PREFIX):
        folder = download_from_hub(*parse_hub_id(name), **hub) if pretrained else None
        config = read_config(folder) if folder else _config_only_from_hub(name, **hub)
    elif Path(name).is_dir():
        folder = Path(name)
        config = read_config(folder)
    elif name.endswith(".json") and Path(name).is_file():
        folder = Path(name).parent
        config = read_config_file(Path(name))
        if pretrained:
            raise WeightsUnavailableError(f"{name} is a model config without weights: pass pretrained=False to "
                                          f"build it, or load a folder written by save_pretrained")
    else:
        config = get_model_config(name)
        weights = config.get("weights") or {}
        folder = None
        if pretrained:
            if not weights.get("hub_repo"):
                raise WeightsUnavailableError(
                    f"zoo model {name!r} has no published weights yet. Use hybridzoo.load({name!r}, "
                    f"pretrained=False) for a randomly initialised model, or train one with training/pretrain.py.")
            folder = download_from_hub(weights["hub_repo"], weights.get("revision"), **hub)
            expected_sha256 = weights.get("sha256")
            config = {**read_config(folder), "name": name}
    model = HybridModel.from_config(apply_overrides(config, **overrides))
    if pretrained:
        load_weights(model, find_weights(folder), expected_sha256=expected_sha256)
    return model


def _config_only_from_hub(name: str, **hub) -> dict:
    """``pretrained=False`` for an ``hf-hub:`` id still needs the architecture: fetch only config.json."""
    from huggingface_hub import hf_hub_download

    repo_id, revision = parse_hub_id(name)
    return read_config(Path(hf_hub_download(repo_id, "config.json", revision=revision, **hub)).parent)
