"""hybridzoo.evaluate (evaluate_model, write_results) and the ``hybridzoo eval`` command on a tiny random model."""
import json
import math

import pytest
import torch

import hybridzoo
from hybridzoo import hierarchy
from hybridzoo.cli import main
from hybridzoo.data import load_image_set
from hybridzoo.evaluate import evaluate_model, extract_split, write_results
from hybridzoo.evaluation import knn_accuracy, knn_votes, linear_probe
from hybridzoo.hierarchy import ClassTree, hierarchical_distance_at_k, mistake_severity

TRAIN, TEST = 60, 30
PROBE = {"Cs": (1.0,), "max_iter": 20}      # small and fast; the hand computation uses the same


def digits_tree() -> ClassTree:
    """A made-up tree over the digits: round (0 6 8 9) / straight (1 4 7) / curly (2 3 5)."""
    group = {"0": "round", "6": "round", "8": "round", "9": "round", "1": "straight", "4": "straight",
             "7": "straight", "2": "curly", "3": "curly", "5": "curly"}
    return ClassTree.from_paths({str(d): ["root", group[str(d)], str(d)] for d in range(10)})


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return hybridzoo.create_model("resnet10t", head="lorentz", preprocessing={"input_size": (3, 32, 32)},
                                  hidden_dim=32).eval()


@pytest.fixture(scope="module")
def evaluated(tiny_model):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(hierarchy.DATASET_TREES, "digits", digits_tree)
        results = evaluate_model(tiny_model, "digits", max_train_samples=TRAIN, max_test_samples=TEST, ks=(1, 5),
                                 device="cpu", probe_options=PROBE)
    return results


def test_evaluate_model_metrics_match_hand_computation(evaluated, tiny_model):
    metrics = evaluated["metrics"]
    expected_keys = {"knn_top1_k1", "knn_top1_k5", "knn_top1_k5_uniform", "linear_probe_top1_features",
                     "linear_probe_top1_tangent", "mistake_severity_knn1", "hierarchical_distance_at_5"}
    assert set(metrics) == expected_keys
    for key in expected_keys - {"mistake_severity_knn1", "hierarchical_distance_at_5"}:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert evaluated["train_samples"] == TRAIN and evaluated["test_samples"] == TEST
    assert evaluated["geometry"]["geometry"] == "lorentz"

    # the same embeddings, by hand
    train_set = load_image_set("digits", "train", max_samples=TRAIN, seed=0)
    test_set = load_image_set("digits", "test", max_samples=TEST)
    train_out, test_out = extract_split(tiny_model, train_set), extract_split(tiny_model, test_set)
    geometry = tiny_model.geometry
    for k in (1, 5):
        assert metrics[f"knn_top1_k{k}"] == knn_accuracy(train_out["embeddings"], train_set.labels,
                                                          test_out["embeddings"], test_set.labels, geometry, k=k)
    assert metrics["knn_top1_k5_uniform"] == knn_accuracy(train_out["embeddings"], train_set.labels,
                                                          test_out["embeddings"], test_set.labels, geometry, k=5,
                                                          weights="uniform")
    probe = linear_probe(train_out["features"], train_set.labels, test_out["features"], test_set.labels, **PROBE)
    assert metrics["linear_probe_top1_features"] == probe["top1"]
    with torch.no_grad():
        tangent = [geometry.logmap0(out["embeddings"]) for out in (train_out, test_out)]
    assert metrics["linear_probe_top1_tangent"] == linear_probe(tangent[0], train_set.labels, tangent[1],
                                                               test_set.labels, **PROBE)["top1"]

    # hierarchy: 1-NN mistakes and top-5 classes of the 5-NN vote (k clamped to the largest k evaluated)
    tree = digits_tree()
    votes1 = knn_votes(train_out["embeddings"], train_set.labels, test_out["embeddings"], geometry, k=1)
    predicted = votes1.argmax(1)
    severity = mistake_severity(predicted.numpy(), test_set.labels.numpy(), tree)
    assert metrics["mistake_severity_knn1"] == pytest.approx(severity)
    assert 1.0 <= severity <= 2.0      # LCA heights in a depth-2 tree
    votes5 = knn_votes(train_out["embeddings"], train_set.labels, test_out["embeddings"], geometry, k=5)
    top5 = votes5.topk(5, dim=1).indices
    hd = hierarchical_distance_at_k(top5.numpy(), test_set.labels.numpy(), tree)
    assert 0.0 <= metrics["hierarchical_distance_at_5"] <= 2.0
    assert metrics["hierarchical_distance_at_5"] == pytest.approx(hd)


def test_unknown_tree_is_skipped_with_a_note_and_k_clamped(tiny_model):
    results = evaluate_model(tiny_model, "digits", max_train_samples=20, max_test_samples=10, ks=(1, 50),
                             linear_probe=False, delta=True, device="cpu")
    assert set(results["metrics"]) == {"knn_top1_k1", "knn_top1_k20", "knn_top1_k20_uniform", "delta_rel",
                                       "suggested_curvature"}
    assert any("hierarchy metrics skipped" in note for note in results["notes"])
    assert any("clamped" in note for note in results["notes"])
    assert 0.0 <= results["metrics"]["delta_rel"] <= 1.0
    assert results["delta"]["n_samples"] == 20


def test_write_results_and_model_card(evaluated, tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "model", results={"knn_top1_k1": 0.123, "old_metric": 0.5},
                                        training={"epochs": 3, "objective": "simclr"})
    paths = write_results({**evaluated, "command": "hybridzoo eval x"}, tmp_path / "out", model_card_dir=folder)
    data = json.loads(paths["json"].read_text())
    assert data["metrics"] == pytest.approx(evaluated["metrics"])
    table = paths["markdown"].read_text()
    assert "| metric | value |" in table
    assert f"| knn_top1_k1 | {evaluated['metrics']['knn_top1_k1']:.4f} |" in table
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: hybridzoo")
    assert f"| knn_top1_k1 | {evaluated['metrics']['knn_top1_k1']:.4f} |" in card   # replaced by the new value
    assert "0.1230" not in card
    assert "| old_metric | 0.5000 |" in card                                            # earlier results kept
    assert "| epochs | 3 |" in card and "| objective | simclr |" in card                # training table kept
    assert "| linear_probe_top1_tangent |" in card
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="save_pretrained"):
        write_results(evaluated, tmp_path / "out2", model_card_dir=tmp_path / "out")


def test_results_json_handles_infinite_curvature(tmp_path):
    results = {"model": "m", "dataset": "d", "train_split": "d:train", "test_split": "d:test", "train_samples": 2,
               "test_samples": 1, "metrics": {"knn_top1_k1": 1.0, "suggested_curvature": math.inf}, "notes": []}
    paths = write_results(results, tmp_path)
    assert json.loads(paths["json"].read_text())["metrics"]["suggested_curvature"] == "inf"


def test_cli_eval(tiny_model, tmp_path, capsys):
    folder = tiny_model.save_pretrained(tmp_path / "model")
    out = tmp_path / "results"
    code = main(["eval", str(folder), "--dataset", "digits", "--max-train-samples", "40", "--max-test-samples", "20",
                 "--k", "1", "3", "--no-linear-probe", "--out", str(out), "--update-card", "--quiet"])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert set(data["metrics"]) == {"knn_top1_k1", "knn_top1_k3", "knn_top1_k3_uniform"}
    assert data["train_samples"] == 40 and data["test_samples"] == 20 and data["command"]
    assert "knn_top1_k3" in (folder / "README.md").read_text()
    assert "knn_top1_k1:" in capsys.readouterr().out
    # --update-card needs a folder; a zoo name is refused with exit status 2
    assert main(["eval", "resnet10t-lorentz", "--no-pretrained", "--dataset", "digits", "--update-card",
                 "--out", str(tmp_path / "x")]) == 2
