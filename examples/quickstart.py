"""End-to-end tour on built-in data (scikit-learn's 8×8 digits, no download): build a zoo model, embed images
on its manifold, classify by geodesic 1-NN, save and reload the model.

    python examples/quickstart.py [--model resnet10t-lorentz] [--out outputs/quickstart]

The model is randomly initialised (no zoo weights are published yet), so the 1-NN figure shows what an untrained
backbone's geometry gives, next to the raw-pixel baseline.
"""
import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import hybridzoo


def digits_as_images(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits (1797, 8, 8) in [0, 16] -> RGB float images (1797, 3, size, size) normalised to zero mean."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (images.repeat(1, 3, 1, 1) - 0.5) / 0.5, torch.tensor(digits.target)


def nearest_neighbour_accuracy(distances: torch.Tensor, train_labels: torch.Tensor, test_labels: torch.Tensor):
    return (train_labels[distances.argmin(dim=1)] == test_labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet10t-lorentz")
    parser.add_argument("--out", default="outputs/quickstart")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = hybridzoo.load(args.model, pretrained=False, preprocessing={"input_size": (3, 32, 32)})
    print(f"{model.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"geometry {model.geometry.__class__.__name__}, outputs {model.head.out_dim} coordinates")

    images, labels = digits_as_images(32)
    idx_train, idx_test = train_test_split(torch.arange(len(labels)), test_size=0.25, random_state=0,
                                           stratify=labels)
    result = hybridzoo.extract(model, images, batch_size=256, device="cpu")
    points = result["embeddings"]
    print(f"embedded {len(points)} digits; largest manifold error {model.geometry.manifold_error(points).max():.2e}")

    geodesic = model.geometry.pairwise_distance(points[idx_test], points[idx_train])
    pixels = torch.cdist(images[idx_test].flatten(1), images[idx_train].flatten(1))
    print(f"1-NN accuracy, geodesic distance of the untrained model: "
          f"{nearest_neighbour_accuracy(geodesic, labels[idx_train], labels[idx_test]):.3f}")
    print(f"1-NN accuracy, raw pixels:                              "
          f"{nearest_neighbour_accuracy(pixels, labels[idx_train], labels[idx_test]):.3f}")

    folder = model.save_pretrained(args.out)
    reloaded = hybridzoo.load(folder).eval()
    same = torch.equal(reloaded(images[:8]), model.eval()(images[:8]))
    print(f"saved to {folder} and reloaded: outputs bit-identical = {same}")
    if not same:
        raise SystemExit("reloaded model differs from the saved one")


if __name__ == "__main__":
    main()
