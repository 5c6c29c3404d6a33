"""The ``hybridzoo`` console script: ``list``, ``info MODEL``, ``extract MODEL IMAGE_FOLDER --out FILE``,
``eval MODEL --dataset D``."""
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


def _cmd_eval(args) -> None:
    from pathlib import Path

    from .evaluate import command_line, evaluate_model, write_results

    card_dir = None
    if args.update_card:
        if not Path(args.model).is_dir():
            raise ValueError(f"--update-card needs MODEL to be a save_pretrained folder; got {args.model!r}")
        card_dir = args.model
    results = evaluate_model(args.model, args.dataset, split_train=args.train_split, split_test=args.test_split,
                             max_train_samples=args.max_train_samples, max_test_samples=args.max_test_samples,
                             ks=args.k, linear_probe=args.linear_probe, delta=args.delta,
                             batch_size=args.batch_size, device=args.device, amp=args.amp, seed=args.seed,
                             pretrained=args.pretrained, progress=not args.quiet)
    results["command"] = command_line()
    paths = write_results(results, args.out, model_card_dir=card_dir)
    for name, value in results["metrics"].items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    for note in results["notes"]:
        print(f"note: {note}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridzoo", description="Hybrid Euclidean-hyperbolic image models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list zoo models")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*-lorentz'")
    p.set_defaults(func=_cmd_list)

    for name, func, help_text in (("info", _cmd_info, "show a model's config and size"),
                                  ("eval", _cmd_eval, "k-NN, linear probe and hierarchy metrics on a dataset"),
                                  ("extract", _cmd_extract, "embed a folder of images")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="zoo name, folder written by save_pretrained, or hf-hub:org/repo[@revision]")
        p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="load weights (default); --no-pretrained builds the architecture with random weights")
        p.set_defaults(func=func)
        if name == "eval":
            _eval_arguments(p)
    p.add_argument("image_folder", help="images directly inside, or one sub-folder per class (labels)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="autocast the backbone")
    p.add_argument("--features", action="store_true", help="also save pooled backbone features")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="digits, fashion-mnist[:root], cifar10, a folder or a Hub id")
    p.add_argument("--out", default="eval-results", help="folder for results.json and results.md")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-test-samples", type=int, default=None)
    p.add_argument("--k", type=int, nargs="+", default=[1, 20, 200], help="k of the k-NN accuracies")
    p.add_argument("--linear-probe", action=argparse.BooleanOptionalAction, default=True,
                   help="linear probes on backbone features and tangent vectors (default on)")
    p.add_argument("--delta", action="store_true", help="also the delta-hyperbolicity of the backbone features")
    p.add_argument("--update-card", action="store_true",
                   help="rewrite MODEL's README.md model card with the results (MODEL must be a folder)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="autocast the backbone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


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
