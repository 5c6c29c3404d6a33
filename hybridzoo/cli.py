"""The ``hybridzoo`` console script: ``list``, ``info MODEL``, ``extract MODEL IMAGE_FOLDER --out FILE``."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import HybridZooError, WeightsUnavailableError
from .extract import AMP_DTYPES, ImageFolderDataset, create_transform, extract, save_features
from .zoo import get_model_config, list_models, load

__all__ = ["main", "build_parser"]


def _cmd_list(args) -> None:
    names = list_models(args.pattern)
    rows = []
    for name in names:
        config = get_model_config(name)
        factors = "×".join(f["geometry"] for f in config["head"]["factors"])
        published = "yes" if (config.get("weights") or {}).get("hub_repo") else "no"
        rows.append((name, config["backbone"], factors, published))
    header = ("model", "backbone", "head geometry", "weights")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def _cmd_info(args) -> None:
    model = load(args.model, pretrained=args.pretrained)
    info = {**model.config, "parameters": sum(p.numel() for p in model.parameters())}
    if not args.model.startswith("hf-hub:"):
        try:
            info["weights"] = get_model_config(args.model).get("weights")
        except HybridZooError:
            pass
    print(json.dumps(info, indent=2))


def _cmd_extract(args) -> None:
    model = load(args.model, pretrained=args.pretrained)
    dataset = ImageFolderDataset(args.image_folder, create_transform(model), in_chans=model.in_chans)
    result = extract(model, dataset, batch_size=args.batch_size, device=args.device, amp=args.amp,
                     return_features=args.features, num_workers=args.num_workers, progress=not args.quiet)
    if all(label < 0 for label in dataset.labels):
        result.pop("labels", None)
    path = save_features(args.out, result, file_names=dataset.file_names, class_names=dataset.class_names,
                         model=model)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in result.items())
    print(f"wrote {path}: {shapes}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridzoo", description="Hybrid Euclidean-hyperbolic image models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list zoo models")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*-lorentz'")
    p.set_defaults(func=_cmd_list)

    for name, func, help_text in (("info", _cmd_info, "show a model's config and size"),
                                  ("extract", _cmd_extract, "embed a folder of images")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="zoo name, folder written by save_pretrained, or hf-hub:org/repo[@revision]")
        p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="load weights (default); --no-pretrained builds the architecture with random weights")
        p.set_defaults(func=func)
    p.add_argument("image_folder", help="images directly inside, or one sub-folder per class (labels)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="autocast the backbone")
    p.add_argument("--features", action="store_true", help="also save pooled backbone features")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (HybridZooError, ValueError, OSError) as err:
        hint = ""
        if isinstance(err, WeightsUnavailableError) and getattr(args, "pretrained", False):
            # The library's message speaks of pretrained=False; say how to do that on the command line.
            hint = " (on the command line: --no-pretrained builds the model with random weights)"
        print(f"hybridzoo {args.command}: error: {err}{hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
