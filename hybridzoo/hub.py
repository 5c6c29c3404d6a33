"""Weights on disk and on the Hugging Face Hub: safetensors only, atomic writes, clear errors.

A saved model is a folder (or Hub repo) with ``config.json`` (see :attr:`HybridModel.config`),
``model.safetensors`` and a ``README.md`` model card. Pickle weights (``.bin``, ``.pt``, ...) are never read.
Hub access goes through huggingface_hub, so ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and revisions
behave as everywhere else in the HF ecosystem.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from .errors import (ArchitectureMismatchError, ChecksumMismatchError, CorruptWeightsError, HybridZooError,
                     UnsafeWeightsError, WeightsUnavailableError)

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "HUB_PREFIX", "save_pretrained", "push_to_hub",
           "model_card", "parse_hub_id", "download_from_hub", "read_config", "read_config_file", "find_weights", "load_weights",
           "sha256_file", "atomic_write"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
HUB_PREFIX = "hf-hub:"
#: File endings of pickle-based weights, which can run arbitrary code when loaded: refused, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename: readers see the old file
    or the new one, never half of one, even if the process dies mid-write."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _library_version() -> str:
    from . import __version__

    return __version__


def save_pretrained(model: nn.Module, save_directory: str | Path, results: dict | None = None,
                    training: dict | None = None, repo_id: str | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``save_directory`` (created if needed).

    ``results`` (metric name -> value) and ``training`` (recipe fields) go into the model card.
    Returns the folder.
    """
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    # Checkpoints must not share storage with the live model, and safetensors wants contiguous tensors.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "library": "hybridzoo", "library_version": _library_version(),
                "backbone": config["backbone"], "geometry": config["geometry"]["geometry"]}
    atomic_write(folder / WEIGHTS_NAME, safetensors.torch.save(tensors, metadata=metadata))
    atomic_write(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    card = model_card(config, results=results, training=training, repo_id=repo_id)
    atomic_write(folder / CARD_NAME, card.encode())
    return folder


def _geometry_lines(geometry: dict) -> list[str]:
    factors = geometry.get("factors") or [geometry]
    lines = []
    for factor in factors:
        dim = f", dim {factor['dim']}" if "dim" in factor else ""
        curvature = f", curvature value c = {factor['curvature']:g}" if "curvature" in factor else ""
        learned = " (learned)" if factor.get("learn_curvature") else ""
        convention = f" — {factor['convention']}" if factor.get("convention") else ""
        lines.append(f"- `{factor['geometry']}`{dim}{curvature}{learned}{convention}")
    return lines


def model_card(config: dict, results: dict | None = None, training: dict | None = None,
               repo_id: str | None = None) -> str:
    """A Hub model card: YAML metadata header, architecture, geometry conventions, how to load, results."""
    name = config["name"]
    geometry = config["geometry"]
    load_id = f"{HUB_PREFIX}{repo_id}" if repo_id else name
    head = config["head"]
    prep = config["preprocessing"]
    lines = [
        "---",
        "library_name: hybridzoo",
        "pipeline_tag: image-feature-extraction",
        "license: apache-2.0",
        "tags:",
        "- hybridzoo",
        "- image-feature-extraction",
        f"- {geometry['geometry']}",
        f"- timm:{config['backbone']}",
        "---",
        "",
        f"# {name}",
        "",
        f"An image embedding model from [hybridzoo](https://pypi.org/project/hybridzoo/): the timm backbone "
        f"`{config['backbone']}` (pooled features, width {config['feature_dim']}) followed by a "
        f"{head['num_layers']}-layer projection MLP (hidden width {head['hidden_dim']}, batch norm "
        f"{'on' if head['batch_norm'] else 'off'}) and the exponential map of a **{geometry['geometry']}** geometry. "
        f"Outputs have {config['output_dim']} coordinates.",
        "",
        "## Geometry",
        "",
        *_geometry_lines(geometry),
        "",
        "Lorentz points are full hyperboloid coordinates, time first, accepted unchanged by "
        "`geoopt.Lorentz(k=1/c)`; product points are the factors' points concatenated in the order above "
        "(`model.geometry.split(x)`). Compare embeddings with `model.geometry.pairwise_distance`, never with "
        "cosine on raw Lorentz coordinates.",
        "",
        "## How to load",
        "",
        "```python",
        "import hybridzoo, timm",
        f'model = hybridzoo.load("{load_id}").eval()',
        "transform = hybridzoo.create_transform(model)",
        "points = model(transform(image).unsqueeze(0))          # (1, "
        f"{config['output_dim']}) on the manifold",
        "features = model.forward_features(transform(image).unsqueeze(0))  # pooled backbone features",
        "```",
        "",
        f"Preprocessing: input size {tuple(prep['input_size'])}, mean {tuple(prep['mean'])}, std "
        f"{tuple(prep['std'])}, interpolation {prep.get('interpolation')}, crop_pct {prep.get('crop_pct')}.",
        "",
    ]
    if training:
        lines += ["## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in training.items()] + [""]
    lines += ["## Results", ""]
    if results:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()]
    else:
        lines += ["No evaluation results recorded yet."]
    return "\n".join(lines) + "\n"


def push_to_hub(model: nn.Module, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                token: str | None = None, endpoint: str | None = None, commit_message: str | None = None,
                create_pr: bool = False, results: dict | None = None, training: dict | None = None):
    """Save the model to a temporary folder and upload it as one commit to ``repo_id`` (created if missing).

    ``revision`` names a branch (created from main if missing). Returns huggingface_hub's ``CommitInfo``;
    ``commit_info.oid`` is the commit sha to pin in a zoo entry.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name="hybridzoo", library_version=_library_version())
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hybridzoo-push-") as tmp:
        save_pretrained(model, tmp, results=results, training=training, repo_id=repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or f"Upload {model.config['name']} with hybridzoo")


def parse_hub_id(name: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo@rev"`` -> ``("org/repo", "rev")``; the revision is None when absent."""
    spec = name[len(HUB_PREFIX):] if name.startswith(HUB_PREFIX) else name
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"bad Hub id {name!r}: expected 'hf-hub:org/repo' or 'hf-hub:org/repo@revision'")
    return repo_id, revision or None


def download_from_hub(repo_id: str, revision: str | None = None, *, cache_dir: str | Path | None = None,
                      endpoint: str | None = None, token: str | None = None) -> Path:
    """Download config.json and model.safetensors of a Hub repo into the HF cache; returns the snapshot folder.

    Works offline from the cache (``HF_HUB_OFFLINE=1`` or no network). A repo that has only pickle weights is
    refused without downloading them.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    kwargs = dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint, token=token,
                  library_name="hybridzoo", library_version=_library_version())
    try:
        config_path = hf_hub_download(filename=CONFIG_NAME, **kwargs)
        hf_hub_download(filename=WEIGHTS_NAME, **kwargs)
    except LocalEntryNotFoundError as err:
        raise WeightsUnavailableError(
            f"{HUB_PREFIX}{where} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline mode or no network). Connect once to download it (unset HF_HUB_OFFLINE), or use "
            f"pretrained=False for a randomly initialised model. ({err})") from None
    except RepositoryNotFoundError:
        raise WeightsUnavailableError(f"Hub repo {repo_id!r} does not exist or is private (log in with "
                                      f"`hf auth login` or pass a token); check the id") from None
    except RevisionNotFoundError:
        raise WeightsUnavailableError(f"Hub repo {repo_id!r} has no revision {revision!r}; check the branch, "
                                      f"tag or commit sha") from None
    except RemoteEntryNotFoundError:
        files = HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=revision)
        _refuse_pickles(files, f"{HUB_PREFIX}{where}")
        raise WeightsUnavailableError(f"{HUB_PREFIX}{where} lacks {CONFIG_NAME} or {WEIGHTS_NAME} (files: "
                                      f"{sorted(files)}); it was not written by hybridzoo's push_to_hub") from None
    return Path(config_path).parent


def _refuse_pickles(file_names, where: str) -> None:
    pickles = sorted(str(f) for f in file_names if str(f).endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UnsafeWeightsError(
            f"{where} has only pickle weights {pickles} and no {WEIGHTS_NAME}. hybridzoo reads safetensors only: "
            f"unpickling a downloaded file can run arbitrary code. Convert them where you trust the source "
            f"(load with torch.load(..., weights_only=True), then model.save_pretrained) and load the result.")


def read_config(folder: Path) -> dict:
    """Read and sanity-check ``config.json`` of a saved model folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise HybridZooError(f"{folder} is not a hybridzoo model folder: {CONFIG_NAME} is missing. Write one with "
                             f"model.save_pretrained(folder).")
    return read_config_file(path)


def read_config_file(path: Path) -> dict:
    """Read and sanity-check a model config file (a ``config.json`` or a zoo entry)."""
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HybridZooError(f"{path} is not valid JSON ({err}); re-save the model with save_pretrained") from None
    missing = [k for k in ("backbone", "head") if k not in config]
    if not isinstance(config, dict) or missing:
        raise HybridZooError(f"{path} is not a hybridzoo config (missing {missing}); it may belong to another "
                             f"library. hybridzoo folders are written by model.save_pretrained.")
    return config


def find_weights(folder: Path) -> Path:
    """The safetensors file of a folder; refuses folders that only hold pickle weights."""
    path = Path(folder) / WEIGHTS_NAME
    if path.is_file():
        return path
    _refuse_pickles((p.name for p in Path(folder).iterdir()), str(folder))
    raise WeightsUnavailableError(f"{folder} has no {WEIGHTS_NAME}; pass pretrained=False to build the "
                                  f"architecture from {CONFIG_NAME} with random weights")


def load_weights(model: nn.Module, path: Path, expected_sha256: str | None = None) -> None:
    """Load a safetensors file into ``model`` after checking its checksum, its format and every name and shape."""
    path = Path(path)
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ChecksumMismatchError(
                f"{path} has sha256 {actual}, but the zoo registry expects {expected_sha256}: the file is corrupt "
                f"or was replaced. Delete it from the cache (it is re-downloaded), or check the zoo entry.")
    try:
        tensors = safetensors.torch.load_file(path)
    except Exception as err:  # safetensors raises its own error type, OSError or ValueError depending on damage
        raise CorruptWeightsError(f"{path} is not a readable safetensors file ({err}). It is truncated, corrupt or "
                                  f"another format: re-download it or re-save with save_pretrained.") from None
    _check_state_dict(model, tensors, path)
    model.load_state_dict(tensors, strict=True)


def _check_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
                         for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape)
    if missing or unexpected or wrong_shape:
        parts = [f"{label} ({len(items)}): {items[:4]}{' ...' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape))
                 if items]
        raise ArchitectureMismatchError(
            f"the weights in {path} do not fit the architecture {model.config['name']!r} "
            f"({model.config['backbone']} + {model.config['geometry']['geometry']} head): " + "; ".join(parts) +
            ". The config and the weights come from different models, or an override changed the architecture: "
            "load the folder without overrides, or pass pretrained=False.")
