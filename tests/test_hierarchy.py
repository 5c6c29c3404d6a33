"""Class trees and the hierarchy metrics (hybridzoo/hierarchy.py), on hand-built trees with known answers."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridzoo.hierarchy import (CIFAR10_CLASSES, FASHION_MNIST_CLASSES, ClassTree, class_depths, cifar10_tree,
                                 dataset_tree, fashion_mnist_tree, hierarchical_distance_at_k, mistake_severity,
                                 tiny_imagenet_tree)

#        root
#      /   |   \
#     A    B    c            heights: a1 a2 b1 b2 c 0; A 1; B1 1; B 2; root 3
#    / \   |                 depths:  A B c 1; a1 a2 B1 2; b1 b2 3
#   a1 a2  B1
#         /  \
#        b1  b2
PATHS = {"a1": ["root", "A", "a1"], "a2": ["root", "A", "a2"], "b1": ["root", "B", "B1", "b1"],
         "b2": ["root", "B", "B1", "b2"], "c": ["root", "c"]}
LABELS = {name: i for i, name in enumerate(PATHS)}          # a1 0, a2 1, b1 2, b2 3, c 4


def uneven_tree() -> ClassTree:
    return ClassTree.from_paths(PATHS)


def test_heights_depths_and_lca():
    tree = uneven_tree()
    assert tree.root == "root" and tree.classes == list(PATHS)
    assert tree.heights == {"a1": 0, "a2": 0, "b1": 0, "b2": 0, "c": 0, "A": 1, "B1": 1, "B": 2, "root": 3}
    assert class_depths(tree).tolist() == [2, 2, 3, 3, 1]
    assert tree.lca("a1", "a2") == "A" and tree.lca("b1", "b2") == "B1" and tree.lca("a1", "b2") == "root"
    expected = np.array([[0, 1, 3, 3, 3],
                         [1, 0, 3, 3, 3],
                         [3, 3, 0, 1, 3],
                         [3, 3, 1, 0, 3],
                         [3, 3, 3, 3, 0]])
    np.testing.assert_array_equal(tree.lca_heights(), expected)
    assert tree.lca_height(LABELS["b1"], LABELS["b2"]) == 1


def test_parent_links_build_the_same_tree():
    parents = {"root": None, "A": "root", "B": "root", "B1": "B", "a1": "A", "a2": "A", "b1": "B1", "b2": "B1",
               "c": "root"}
    tree = ClassTree(parents, list(PATHS))
    np.testing.assert_array_equal(tree.lca_heights(), uneven_tree().lca_heights())
    assert tree.path("b2") == ["root", "B", "B1", "b2"]


def test_mistake_severity_and_hierarchical_distance():
    tree = uneven_tree()
    true = np.array([0, 0, 2, 3, 4, 1])
    predicted = np.array([0, 1, 3, 0, 2, 1])       # errors: a1->a2 (1), b1->b2 (1), b2->a1 (3), c->b1 (3)
    assert mistake_severity(predicted, true, tree) == pytest.approx((1 + 1 + 3 + 3) / 4)
    assert mistake_severity(torch.tensor(predicted), torch.tensor(true), tree) == pytest.approx(2.0)
    assert math.isnan(mistake_severity(true, true, tree))                   # no mistakes
    # top-1 predictions: hierarchical distance@1 = mean LCA height over all samples (correct ones count 0)
    assert hierarchical_distance_at_k(predicted[:, None], true, tree) == pytest.approx(8 / 6)
    topk = np.array([[0, 1, 4],        # true a1: 0, 1, 3
                     [3, 2, 0]])       # true b1: 1, 0, 3
    expected = ((0 + 1 + 3) / 3 + (1 + 0 + 3) / 3) / 2
    assert hierarchical_distance_at_k(topk, np.array([0, 2]), tree) == pytest.approx(expected)
    with pytest.raises(ValueError, match="outside"):
        mistake_severity(np.array([5]), np.array([0]), tree)
    with pytest.raises(ValueError, match="integer"):
        mistake_severity(np.array([0.0]), np.array([0]), tree)


def test_invalid_trees_are_refused():
    with pytest.raises(ValueError, match="two parents"):
        ClassTree.from_paths({"x": ["root", "A", "x"], "y": ["root", "B", "A", "y"]})
    with pytest.raises(ValueError, match="must be leaves"):
        ClassTree.from_paths({"A": ["root", "A"], "x": ["root", "A", "x"]})
    with pytest.raises(ValueError, match="exactly one root"):
        ClassTree({"a": None, "b": None}, ["a", "b"])
    with pytest.raises(ValueError, match="cycle"):
        ClassTree({"root": None, "r": "root", "a": "b", "b": "a", "x": "a"}, ["r", "x"])
    # nodes without a class below them are dropped: they would otherwise add height
    tree = ClassTree({"root": None, "x": "root", "y": "root", "u": "root", "v": "u", "w": "v"}, ["x", "y"])
    assert set(tree.parents) == {"root", "x", "y"} and tree.heights["root"] == 1


def test_hypernym_paths_keep_the_longest_path_then_the_first():
    paths = {"x": [["root", "P", "Q", "x"], ["root", "R", "x"]],                      # longest: via P, Q
             "y": [["root", "R", "y"], ["root", "S", "y"]],                           # tie: the first (R)
             "z": [["root", "R", "T", "z"]]}
    tree = ClassTree.from_hypernym_paths(paths)
    assert tree.path("x") == ["root", "P", "Q", "x"] and tree.path("y") == ["root", "R", "y"]
    assert tree.path("z") == ["root", "R", "T", "z"] and "S" not in tree.parents
    assert tree.lca_height(0, 1) == tree.heights["root"] == 3 and tree.lca_height(1, 2) == tree.heights["R"] == 2


def test_pruning_removes_single_child_chains():
    tree = uneven_tree().pruned()                     # B has the single child B1: b1, b2 hang from B1 under root
    assert tree.path("b1") == ["root", "B1", "b1"] and "B" not in tree.parents
    assert tree.heights["root"] == 2 and tree.lca_height(LABELS["a1"], LABELS["b1"]) == 2
    chain = ClassTree.from_paths({"x": ["root", "u", "v", "x"], "y": ["root", "y"]}).pruned()
    assert chain.path("x") == ["root", "x"] and chain.heights["root"] == 1


def test_cifar10_and_fashion_mnist_trees():
    flat, deep = cifar10_tree(), cifar10_tree(deep=True)
    cat, dog, bird, truck, automobile = (CIFAR10_CLASSES.index(n) for n in ("cat", "dog", "bird", "truck",
                                                                             "automobile"))
    assert flat.classes == list(CIFAR10_CLASSES)
    assert (flat.lca_height(cat, dog), flat.lca_height(cat, bird), flat.lca_height(cat, truck)) == (1, 1, 2)
    assert (deep.lca_height(cat, dog), deep.lca_height(cat, bird), deep.lca_height(cat, truck)) == (1, 2, 3)
    assert deep.lca_height(truck, automobile) == 1
    fashion = fashion_mnist_tree()
    assert fashion.num_classes == 10 and set(class_depths(fashion)) == {2}
    # T-shirt/top (0) vs Shirt (6): tops; Sandal (5) vs Ankle boot (9): footwear; Trouser (1) vs Dress (3): root
    assert (fashion.lca_height(0, 6), fashion.lca_height(5, 9), fashion.lca_height(1, 3)) == (1, 1, 2)


HIERARCHY = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-32" / "hierarchy.json"


@pytest.mark.skipif(not HIERARCHY.is_file(), reason="tiny-imagenet-32/hierarchy.json not available")
def test_tiny_imagenet_tree():
    entries = json.loads(HIERARCHY.read_text())
    full, tree = tiny_imagenet_tree(HIERARCHY, prune=False), tiny_imagenet_tree(HIERARCHY)
    assert tree.num_classes == 200 and tree.classes == [e["synset"] for e in entries]
    assert tree.root == "entity.n.01" and tree.classes[0] == "egyptian_cat.n.01"      # label 0 = n02124075
    # every class keeps its longest hypernym path in the unpruned tree
    for entry, node in zip(entries, full.classes):
        assert full.depths[node] == max(len(p) for p in entry["hypernym_paths"]) - 1
    tabby, persian = tree.classes.index("tabby.n.01"), tree.classes.index("persian_cat.n.01")
    assert tree.lca(tree.classes[tabby], tree.classes[persian]) == "domestic_cat.n.01"
    assert tree.lca_height(0, tabby) == 1                     # Egyptian cat and tabby: siblings
    # pruning never changes which classes an ancestor separates, only the heights
    heights, heights_full = tree.lca_heights(), full.lca_heights()
    assert (heights <= heights_full).all() and (heights[~np.eye(200, dtype=bool)] > 0).all()


def test_dataset_trees_follow_the_dataset_label_order():
    assert dataset_tree("cifar10", list(CIFAR10_CLASSES)).classes == list(CIFAR10_CLASSES)
    reordered = dataset_tree("fashion-mnist", list(reversed(FASHION_MNIST_CLASSES)))
    assert reordered.classes[0] == "Ankle boot" and reordered.lca_height(0, 4) == 1     # Ankle boot, Sandal
    with pytest.raises(ValueError, match="reordering"):
        dataset_tree("cifar10", ["cat", "dog"])
    with pytest.raises(ValueError, match="no class tree"):
        dataset_tree("digits")
    if HIERARCHY.is_file():
        wnids = [e["wnid"] for e in json.loads(HIERARCHY.read_text())]
        tree = dataset_tree("tiny-imagenet-32", wnids)
        assert tree.classes[0] == "n02124075" and tree.parents["n02124075"] == "domestic_cat.n.01"
        np.testing.assert_array_equal(tree.lca_heights(), tiny_imagenet_tree(HIERARCHY).lca_heights())
