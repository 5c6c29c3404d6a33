"""Contrastive pretraining of a hybridzoo model, on one CPU or many GPUs.

    accelerate launch training/pretrain.py                                  # resnet10t-lorentz on digits
    accelerate launch --num_processes 2 training/pretrain.py --recipe training/recipes/resnet18-lorentz.json
    python training/pretrain.py --model resnet10t-euclidean --dataset fashion-mnist --epochs 5

Every field of hybridzoo.training.TrainConfig is a flag (``--batch-size``, ``--checkpointing-steps``, ...);
flags override the recipe file, which overrides the defaults. Dict- and list-valued fields take JSON
(``--model-overrides '{"curvature": 0.5}'``).
"""
import argparse
import dataclasses
import json
import sys
import typing

from hybridzoo.training import TrainConfig, train


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--recipe", default=None, help="JSON recipe (training/recipes/<model>.json)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction)
        elif typing.get_origin(base) in (dict, list) or base in (dict, list):
            parser.add_argument(flag, type=json.loads, metavar="JSON")
        else:
            parser.add_argument(flag, type=base)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = vars(_parser().parse_args(argv))
    config = TrainConfig.from_recipe(args.pop("recipe"), **args)
    results = train(config)
    if results:
        print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))
        print(f"\nmodel saved to {config.output_dir}; load it with hybridzoo.load({config.output_dir!r})")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
