"""Class hierarchies and the hierarchy-aware metrics of Bertinetto et al., "Making Better Mistakes" (CVPR 2020).

A :class:`ClassTree` is a rooted tree whose leaves are the classes of a dataset, in label order
(``tree.classes[i]`` is label ``i``). Conventions:

- **depth** of a node: number of edges from the root (root depth 0).
- **height** of a node: number of edges on the longest downward path from it to a leaf (**leaves at height 0**),
  the ILSVRC hierarchical-cost convention that Bertinetto et al. use; in a tree whose leaves all sit at the same
  depth it is simply (leaf depth - node depth).
- **LCA height** of two classes: the height of their lowest common ancestor; 0 for a class and itself.

Metrics (predictions and labels are integer class labels):

- :func:`mistake_severity`: mean LCA height between predicted and true class over the top-1 *errors*.
- :func:`hierarchical_distance_at_k`: for each sample the mean LCA height between the true class and each of its
  k top-ranked predictions (a correct one counts 0), averaged over samples.

Ready-made trees: :func:`cifar10_tree`, :func:`fashion_mnist_tree`, :func:`tiny_imagenet_tree` (WordNet, from
``tiny-imagenet-32/hierarchy.json``).

>>> tree = cifar10_tree()
>>> tree.lca_height(3, 5), tree.lca_height(3, 9)            # cat-dog (animal), cat-truck (root)
(1, 2)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

from .errors import DataNotFoundError

__all__ = ["ClassTree", "class_depths", "mistake_severity", "hierarchical_distance_at_k", "cifar10_tree",
           "fashion_mnist_tree", "tiny_imagenet_tree", "dataset_tree", "DATASET_TREES", "CIFAR10_CLASSES",
           "FASHION_MNIST_CLASSES"]

Node = Hashable


class ClassTree:
    """A rooted tree over class labels.

    Args:
        parents: ``{node: parent}`` for every node; the root maps to ``None`` (exactly one root).
        classes: the class nodes in label order (label i = ``classes[i]``); each must be a leaf.

    Nodes with no class below them are dropped, so every leaf is a class and heights count levels above classes.

    Use :meth:`from_paths` (one root-to-leaf path per class) or :meth:`from_hypernym_paths` (several paths per
    class, e.g. WordNet) rather than writing parent links by hand.
    """

    def __init__(self, parents: Mapping[Node, Node | None], classes: Sequence[Node]):
        links = dict(parents)
        for parent in list(links.values()):
            if parent is not None and parent not in links:
                links[parent] = None                 # a parent never listed as a child: a root candidate
        self.classes: list[Node] = list(classes)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        missing = [node for node in self.classes if node not in links]
        if missing:
            raise ValueError(f"classes {missing[:5]} are not nodes of the tree")
        self.parents: dict[Node, Node | None] = {node: links[node] for node in self._ancestors(links)}
        roots = [node for node, parent in self.parents.items() if parent is None]
        if len(roots) != 1:
            raise ValueError(f"a class tree needs exactly one root (a node without parent); found {roots[:5]}")
        self.root: Node = roots[0]
        self.children: dict[Node, list[Node]] = {node: [] for node in self.parents}
        for node, parent in self.parents.items():
            if parent is not None:
                self.children[parent].append(node)
        for node in self.classes:
            if self.children[node]:
                raise ValueError(f"class {node!r} has children {self.children[node][:3]}: classes must be leaves")
        self.depths = self._compute_depths()
        self.heights = self._compute_heights()
        self._lca_heights: np.ndarray | None = None

    def _ancestors(self, links: Mapping[Node, Node | None]) -> list[Node]:
        """The classes and all their ancestors, in first-visit order."""
        seen: dict[Node, None] = {}
        for node in self.classes:
            # stops at the root or at a node already seen (which also ends a walk around a cycle)
            while node is not None and node not in seen:
                seen[node] = None
                node = links[node]
        return list(seen)

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_paths(cls, paths: Mapping[Node, Sequence[Node]], classes: Sequence[Node] | None = None) -> ClassTree:
        """Build from one root-to-leaf path per class: ``{class: [root, ..., leaf]}``.

        The last node of each path is the class's leaf (usually the class itself). Nodes are identified by name:
        equal names on different paths are the same node, which must then have the same parent everywhere.
        ``classes`` gives the label order (default: the mapping's order).
        """
        parents: dict[Node, Node | None] = {}
        leaves = {}
        for name, path in paths.items():
            path = list(path)
            if not path:
                raise ValueError(f"empty path for class {name!r}")
            leaves[name] = path[-1]
            for parent, node in zip([None] + path[:-1], path):
                if node in parents and parents[node] != parent:
                    raise ValueError(f"node {node!r} has two parents, {parents[node]!r} and {parent!r}: the paths "
                                     f"describe a DAG, not a tree (use ClassTree.from_hypernym_paths)")
                parents[node] = parent
        order = list(paths) if classes is None else list(classes)
        missing = [name for name in order if name not in leaves]
        if missing:
            raise ValueError(f"no path for classes {missing[:5]}")
        return cls(parents, [leaves[name] for name in order])

    @classmethod
    def from_hypernym_paths(cls, paths: Mapping[Node, Sequence[Sequence[Node]]],
                            classes: Sequence[Node] | None = None) -> ClassTree:
        """Build a tree from a DAG given as several root-to-leaf paths per class (WordNet ``hypernym_paths``).

        Every node keeps the parent on its **longest** path from the root (the deepest, most specific reading,
        as Bertinetto et al. did for ImageNet); among equally long paths the first one listed wins. Because the
        longest path to a node runs through the longest path to its parent, the result is a tree in which every
        node sits at its longest-path depth.
        """
        best: dict[Node, tuple[int, Node | None]] = {}       # node -> (longest depth seen, parent on that path)
        leaves = {}
        for name, class_paths in paths.items():
            if not class_paths:
                raise ValueError(f"no path for class {name!r}")
            for path in class_paths:
                path = list(path)
                leaves.setdefault(name, path[-1])
                if path[-1] != leaves[name]:
                    raise ValueError(f"the paths of class {name!r} end in different nodes")
                for depth, (parent, node) in enumerate(zip([None] + path[:-1], path)):
                    if node not in best or depth > best[node][0]:     # strict: the first longest path wins
                        best[node] = (depth, parent)
        order = list(paths) if classes is None else list(classes)
        return cls({node: parent for node, (_, parent) in best.items()}, [leaves[name] for name in order])

    def with_classes(self, classes: Sequence[Node]) -> ClassTree:
        """The same tree with the classes in another label order (e.g. a dataset's ``class_names``)."""
        unknown = [name for name in classes if name not in set(self.classes)]
        if unknown or len(classes) != self.num_classes:
            raise ValueError(f"the classes must be a reordering of the tree's {self.num_classes} classes; "
                             f"unknown: {unknown[:5]}")
        return ClassTree(self.parents, classes)

    def pruned(self) -> ClassTree:
        """A copy without the internal nodes that have exactly one child (except the root), as Bertinetto et al.
        prune the WordNet tree: a chain of single-child nodes adds height without separating any classes."""
        def kept_parent(node):
            parent = self.parents[node]
            while parent is not None and parent != self.root and len(self.children[parent]) == 1:
                parent = self.parents[parent]
            return parent

        keep = [node for node in self.parents if node == self.root or len(self.children[node]) != 1]
        return ClassTree({node: kept_parent(node) for node in keep}, self.classes)

    # -- structure ---------------------------------------------------------------------------------------------

    def _compute_depths(self) -> dict[Node, int]:
        depths = {self.root: 0}
        stack = [self.root]
        while stack:
            node = stack.pop()
            for child in self.children[node]:
                depths[child] = depths[node] + 1
                stack.append(child)
        if len(depths) != len(self.parents):
            unreachable = [node for node in self.parents if node not in depths]
            raise ValueError(f"the parent links contain a cycle (nodes {unreachable[:5]} are not below the root)")
        return depths

    def _compute_heights(self) -> dict[Node, int]:
        heights: dict[Node, int] = {}
        for node in sorted(self.parents, key=self.depths.__getitem__, reverse=True):   # deepest first
            heights[node] = max((heights[child] + 1 for child in self.children[node]), default=0)
        return heights

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, node: Node) -> list[Node]:
        """[root, ..., node]."""
        path = [node]
        while self.parents[path[-1]] is not None:
            path.append(self.parents[path[-1]])
        return path[::-1]

    def lca(self, a: Node, b: Node) -> Node:
        """Lowest common ancestor of two nodes."""
        ancestors = set(self.path(a))
        while b not in ancestors:
            b = self.parents[b]
        return b

    def lca_height(self, a: int, b: int) -> int:
        """Height of the lowest common ancestor of classes with labels ``a`` and ``b`` (0 when a == b)."""
        return int(self.lca_heights()[a, b])

    def lca_heights(self) -> np.ndarray:
        """(C, C) int matrix of LCA heights between classes, by label (computed once)."""
        if self._lca_heights is None:
            paths = [self.path(node) for node in self.classes]
            matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
            for i, path_i in enumerate(paths):
                for j in range(i + 1, self.num_classes):
                    path_j = paths[j]
                    common = 0                         # length of the shared prefix of the two root paths
                    while common < min(len(path_i), len(path_j)) and path_i[common] == path_j[common]:
                        common += 1
                    matrix[i, j] = matrix[j, i] = self.heights[path_i[common - 1]]
            self._lca_heights = matrix
        return self._lca_heights

    def __repr__(self) -> str:
        return (f"ClassTree({self.num_classes} classes, {len(self.parents)} nodes, root={self.root!r}, "
                f"height={self.heights[self.root]})")


def class_depths(tree: ClassTree) -> np.ndarray:
    """(C,) depth of each class (edges from the root), in label order: the x axis of radius-vs-depth plots."""
    return np.array([tree.depths[node] for node in tree.classes], dtype=np.int64)


def _as_labels(values, name: str, ndim: int) -> np.ndarray:
    try:
        import torch
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    array = np.asarray(values)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a {ndim}-D array of integer labels, got shape {array.shape} "
                         f"and dtype {array.dtype}")
    return array.astype(np.int64)


def _check_range(labels: np.ndarray, tree: ClassTree, name: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= tree.num_classes):
        raise ValueError(f"{name} holds labels outside [0, {tree.num_classes}) of the tree's classes")


def mistake_severity(predicted, true, tree: ClassTree) -> float:
    """Mean LCA height between predicted and true class over the samples where they differ.

    Args:
        predicted: (N,) predicted labels; true: (N,) true labels; tree: the classes' hierarchy.

    Returns the mean height, or NaN when there is no mistake (the mean over an empty set).
    """
    predicted, true = _as_labels(predicted, "predicted", 1), _as_labels(true, "true", 1)
    if predicted.shape != true.shape:
        raise ValueError(f"predicted {predicted.shape} and true {true.shape} differ in shape")
    _check_range(predicted, tree, "predicted")
    _check_range(true, tree, "true")
    wrong = predicted != true
    if not wrong.any():
        return float("nan")
    return float(tree.lca_heights()[predicted[wrong], true[wrong]].mean())


def hierarchical_distance_at_k(topk_predictions, true, tree: ClassTree) -> float:
    """Mean over samples of the mean LCA height between the true class and each of the k top predictions.

    Args:
        topk_predictions: (N, k) labels ranked by score (e.g. ``logits.topk(k).indices`` or
            ``knn_votes(...).topk(k).indices``); true: (N,) labels; tree: the classes' hierarchy.
    """
    topk, true = _as_labels(topk_predictions, "topk_predictions", 2), _as_labels(true, "true", 1)
    if len(topk) != len(true):
        raise ValueError(f"{len(topk)} rows of predictions for {len(true)} labels")
    _check_range(topk, tree, "topk_predictions")
    _check_range(true, tree, "true")
    if len(true) == 0:
        return float("nan")
    return float(tree.lca_heights()[topk, true[:, None]].mean())


# -- ready-made trees ----------------------------------------------------------------------------------------------

#: CIFAR-10 label names in label order (as in the dataset's ClassLabel).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Fashion-MNIST label names in label order (as hybridzoo.data.FASHION_MNIST_CLASSES).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


def cifar10_tree(deep: bool = False) -> ClassTree:
    """CIFAR-10: root -> {animal: bird, cat, deer, dog, frog, horse; vehicle: airplane, automobile, ship, truck}.

    ``deep=True`` adds one level: animal -> {mammal: cat, deer, dog, horse; bird; frog} and
    vehicle -> {road_vehicle: automobile, truck; airplane; ship}. Heights: flat tree root 2, animal/vehicle 1;
    deep tree root 3, animal/vehicle 2, mammal/road_vehicle 1.
    """
    groups = {"bird": ["animal"], "cat": ["animal", "mammal"], "deer": ["animal", "mammal"],
              "dog": ["animal", "mammal"], "frog": ["animal"], "horse": ["animal", "mammal"],
              "airplane": ["vehicle"], "automobile": ["vehicle", "road_vehicle"], "ship": ["vehicle"],
              "truck": ["vehicle", "road_vehicle"]}
    paths = {name: ["root", *(groups[name] if deep else groups[name][:1]), name] for name in CIFAR10_CLASSES}
    return ClassTree.from_paths(paths)


def fashion_mnist_tree() -> ClassTree:
    """Fashion-MNIST natural groups: tops (T-shirt/top, Pullover, Coat, Shirt), bottoms (Trouser), dresses (Dress),
    footwear (Sandal, Sneaker, Ankle boot), bags (Bag). Every class sits at depth 2; root height 2, groups 1."""
    group = {"T-shirt/top": "tops", "Pullover": "tops", "Coat": "tops", "Shirt": "tops", "Trouser": "bottoms",
             "Dress": "dresses", "Sandal": "footwear", "Sneaker": "footwear", "Ankle boot": "footwear",
             "Bag": "bags"}
    return ClassTree.from_paths({name: ["root", group[name], name] for name in FASHION_MNIST_CLASSES})


def _default_tiny_imagenet_hierarchy() -> Path:
    """$HYBRIDZOO_DATA_DIR/tiny-imagenet-32/hierarchy.json, else ../shared/data/... beside the checkout."""
    roots = [Path(os.environ["HYBRIDZOO_DATA_DIR"])] if os.environ.get("HYBRIDZOO_DATA_DIR") else []
    roots.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for root in roots:
        candidate = root / "tiny-imagenet-32" / "hierarchy.json"
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(
        "tiny-imagenet-32/hierarchy.json not found under $HYBRIDZOO_DATA_DIR or ../shared/data; pass its path "
        "(a JSON list of {label, wnid, synset, hypernym_paths} in label order, as written for the "
        "tiny-imagenet-32 parquet folder)")


def tiny_imagenet_tree(path: str | os.PathLike | None = None, prune: bool = True,
                       class_names: str = "synset") -> ClassTree:
    """The WordNet tree of the 200 Tiny-ImageNet classes, from ``tiny-imagenet-32/hierarchy.json``.

    The file lists, per label, the class's WordNet id (``wnid``), synset name and every hypernym path from
    ``entity.n.01`` (54 of the 200 classes have 2 or 3 paths: WordNet is a DAG). Tree nodes are synset names
    (``tree.classes[i]`` is the synset of label i; the leaves are the classes, none is an ancestor of another).
    The DAG becomes a tree by :meth:`ClassTree.from_hypernym_paths` (each node keeps its longest path; the first
    listed among equally long ones) and, with ``prune=True`` (default, as Bertinetto et al.), internal nodes with a
    single child are removed, so heights count only levels that separate classes.

    ``class_names="wnid"`` names the class leaves by WordNet id (``n02124075``, the dataset's label names)
    instead of synset name (``egyptian_cat.n.01``); internal nodes keep their synset names.
    """
    file = Path(path) if path is not None else _default_tiny_imagenet_hierarchy()
    entries = json.loads(Path(file).read_text())
    if not isinstance(entries, list) or any(entry.get("label") != i for i, entry in enumerate(entries)):
        raise ValueError(f"{file}: expected a JSON list of objects in label order with 'label' 0, 1, ...")
    if class_names not in ("synset", "wnid"):
        raise ValueError(f"class_names must be 'synset' or 'wnid', got {class_names!r}")
    tree = ClassTree.from_hypernym_paths({entry["synset"]: entry["hypernym_paths"] for entry in entries})
    tree = tree.pruned() if prune else tree
    if class_names == "wnid":
        rename = {entry["synset"]: entry["wnid"] for entry in entries}
        parents = {rename.get(node, node): parent for node, parent in tree.parents.items()}
        tree = ClassTree(parents, [rename[node] for node in tree.classes])   # classes are leaves: no parent renamed
    return tree


#: Ready-made trees by dataset name (as in ``hybridzoo.data`` / ``training/pretrain.py --dataset``).
DATASET_TREES = {"cifar10": cifar10_tree, "fashion-mnist": fashion_mnist_tree,
                 "tiny-imagenet-32": lambda: tiny_imagenet_tree(class_names="wnid")}


def dataset_tree(dataset: str, class_names: Sequence[str] | None = None) -> ClassTree:
    """The ready-made tree of a named dataset, with its classes in the order of ``class_names`` when given.

    ``dataset``: ``"cifar10"``, ``"fashion-mnist"`` or ``"tiny-imagenet-32"`` (classes named by WordNet id, as in the
    dataset's labels). ``class_names``: the dataset's label names, e.g. ``ImageSet.class_names``.
    """
    if dataset not in DATASET_TREES:
        raise ValueError(f"no class tree for dataset {dataset!r}; ready-made trees: {sorted(DATASET_TREES)} "
                         f"(or build one with ClassTree.from_paths)")
    tree = DATASET_TREES[dataset]()
    return tree if class_names is None or list(class_names) == tree.classes else tree.with_classes(class_names)

