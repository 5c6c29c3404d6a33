"""Evaluation on frozen embeddings with the geometry's own similarity.

k-NN (InstDisc / DINO protocol): the neighbours of a query are the training points with the largest logits
s/τ, where s is the geometry's default similarity — cosine for Euclidean heads, minus the geodesic distance for
Lorentz, sphere and product heads (never cosine on raw Lorentz coordinates). k = 1 predicts the nearest label;
k > 1 votes with weights exp(s/τ) (τ = 0.07).
"""
from __future__ import annotations

import torch

from .geometry import Geometry

__all__ = ["knn_classify", "knn_accuracy"]


@torch.no_grad()
def knn_classify(train_points: torch.Tensor, train_labels: torch.Tensor, query_points: torch.Tensor,
                 geometry: Geometry, k: int = 1, temperature: float = 0.07, block_size: int = 1024,
                 num_classes: int | None = None) -> torch.Tensor:
    """Predicted labels (Q,) for queries (Q, P) from training points (N, P) with labels (N,).

    Queries are processed ``block_size`` at a time, so memory stays at block_size × N logits.
    """
    k = min(k, len(train_points))
    num_classes = num_classes or int(train_labels.max()) + 1
    predictions = []
    for block in torch.split(query_points, block_size):
        logits = geometry.logits(block, train_points, temperature=temperature)
        top_logits, top_index = logits.topk(k, dim=1)
        if k == 1:
            predictions.append(train_labels[top_index[:, 0]])
            continue
        # exp(s/τ) relative to the best neighbour: the same vote, without overflow for large s/τ
        weights = (top_logits - top_logits[:, :1]).exp()
        votes = torch.zeros(len(block), num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels[top_index], weights)
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_accuracy(train_points: torch.Tensor, train_labels: torch.Tensor, test_points: torch.Tensor,
                 test_labels: torch.Tensor, geometry: Geometry, k: int = 1, temperature: float = 0.07,
                 block_size: int = 1024) -> float:
    """Top-1 accuracy of :func:`knn_classify` on labelled queries."""
    predicted = knn_classify(train_points, train_labels, test_points, geometry, k=k, temperature=temperature,
                             block_size=block_size, num_classes=int(max(train_labels.max(), test_labels.max())) + 1)
    return (predicted == test_labels).float().mean().item()
