"""Training: recipes and flags, optimiser groups, schedules, checkpoints, and real short runs of pretrain.py."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

import hybridzoo
from hybridzoo.data import load_image_set
from hybridzoo.optim import LARS, build_optimizer, parameter_groups, warmup_cosine_schedule
from hybridzoo.training import EpochSeededViews, TrainConfig, find_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "training" / "pretrain.py"
RECIPES = ROOT / "training" / "recipes"
ACCELERATE = Path(sys.executable).parent / "accelerate"


def pretrain_command(output_dir, *flags):
    """A tiny, fast pretrain.py run on digits (256 images, batch 32, 32 px, resnet10t)."""
    return [sys.executable, str(PRETRAIN), "--model", "resnet10t-lorentz", "--dataset", "digits",
            "--output-dir", str(output_dir), "--max-train-samples", "256", "--batch-size", "32",
            "--knn-train-samples", "256", "--num-workers", "0", "--report-to", "", "--log-every", "2", *flags]


def run(command, env=None):
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# --------------------------------------------------------------------------------------------- configuration


def test_recipe_values_are_overridden_by_flags(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"model": "resnet18-euclidean", "epochs": 7, "lr": 0.5}))
    config = TrainConfig.from_recipe(recipe, epochs=3)
    assert (config.model, config.epochs, config.lr) == ("resnet18-euclidean", 3, 0.5)
    assert config.dataset == TrainConfig().dataset
    recipe.write_text(json.dumps({"epoch": 7}))
    with pytest.raises(ValueError, match="unknown keys.*epoch"):
        TrainConfig.from_recipe(recipe)


def test_command_line_flags_parse_to_config_types():
    sys.path.insert(0, str(PRETRAIN.parent))
    from pretrain import _parser

    args = vars(_parser().parse_args(["--epochs", "4", "--lr", "0.1", "--no-knn-before-training",
                                      "--model-overrides", '{"curvature": 0.5}', "--checkpointing-steps", "epoch",
                                      "--factor-weights", "[1, 0.5]"]))
    assert args == {"recipe": None, "epochs": 4, "lr": 0.1, "knn_before_training": False,
                    "model_overrides": {"curvature": 0.5}, "checkpointing_steps": "epoch",
                    "factor_weights": [1, 0.5]}
    assert TrainConfig(checkpointing_steps="epoch").checkpoint_every() == "epoch"
    assert TrainConfig(checkpointing_steps="25").checkpoint_every() == 25
    with pytest.raises(ValueError, match="checkpointing-steps"):
        TrainConfig(checkpointing_steps="often").checkpoint_every()


@pytest.mark.parametrize("name", hybridzoo.list_models())
def test_every_zoo_model_has_a_valid_recipe(name):
    config = TrainConfig.from_recipe(RECIPES / f"{name}.json")
    assert config.model == name
    assert config.objective == ("hybrid" if name.endswith("-hybrid") else "simclr")


def test_no_weight_decay_on_scalars_biases_and_norms():
    model = hybridzoo.create_model("resnet10t", head="hybrid")
    from hybridzoo.losses import ContrastiveObjective

    objective = ContrastiveObjective("hybrid", learn_temperature=True, num_factors=2,
                                     factor_names=["euclidean", "lorentz"])
    decay, no_decay = parameter_groups([model, objective], weight_decay=0.05)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, parameter in [*model.named_parameters(), *objective.named_parameters()]:
        special = any(key in name for key in ("log_c", "log_alpha", "log_scale", "bias", "bn", "norm"))
        if special:
            assert id(parameter) in no_decay_ids, name
    assert id(model.geometry.factors[1]._curvature.log_c) in no_decay_ids
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])


def test_warmup_cosine_schedule_values():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine_schedule(optimizer, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs[4:] == pytest.approx(expected)


def test_lars_step_matches_hand_computation():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad, bias.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    optimizer = LARS([{"params": [weight], "weight_decay": 0.1},
                      {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}], lr=0.5, trust_coefficient=0.01)
    optimizer.step()
    g = torch.tensor([[0.3, 1.4]])  # grad + 0.1 w
    trust = 0.01 * 5.0 / g.norm()
    assert torch.allclose(weight.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * trust * g)
    assert torch.allclose(bias.detach(), torch.tensor([0.0]))  # excluded: plain step, no decay
    assert isinstance(build_optimizer("lars", [torch.nn.Linear(2, 2)], 0.1, 0.0), LARS)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("sgdw", [torch.nn.Linear(2, 2)], 0.1, 0.0)


def test_views_depend_only_on_seed_epoch_and_index():
    images = load_image_set("digits", "train", max_samples=16)
    model = hybridzoo.create_model("resnet10t", head="euclidean", preprocessing={"input_size": (3, 32, 32)})
    transform = hybridzoo.data.transforms_for(model)[0]
    views = EpochSeededViews(images, transform, seed=3)
    first = views[5]
    torch.manual_seed(123)  # global RNG state must not matter
    again = views[5]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1]), "the two views of an image must differ"
    views.set_epoch(1)
    assert not torch.equal(views[5][0], first[0]), "a new epoch must draw new augmentations"


def test_find_checkpoint_ignores_incomplete_saves(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_00000004").mkdir(parents=True)
    (root / "step_00000004" / "trainer_state.json").write_text("{}")
    (root / ".tmp-step_00000008").mkdir()  # a save killed half-way
    (root / "step_00000006").mkdir()  # no trainer state: incomplete
    assert find_checkpoint(root, "latest").name == "step_00000004"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        find_checkpoint(root, str(root / "step_00000006"))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        find_checkpoint(tmp_path / "empty", "latest")


# --------------------------------------------------------------------------------------------- real runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_loss_and_gradients_of_one(tmp_path):
    """design.md §4: 2 processes × batch B == 1 process × batch 2B, for every objective (tests/distributed_check.py).

    accelerate 1.16 runs ONE process for `launch --cpu --num_processes 2` (its simple launcher); `--multi_gpu`
    starts torchrun, and the script's Accelerator(cpu=True) then uses gloo on the CPU.
    """
    check = ROOT / "tests" / "distributed_check.py"
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    run([sys.executable, str(check), str(tmp_path / "one.safetensors")])
    run([*launch, "--main_process_port", str(_free_port()), str(check), str(tmp_path / "two.safetensors")])
    run([*launch, "--main_process_port", str(_free_port()), str(check), str(tmp_path / "nogather.safetensors"),
         "--no-gather"])
    one, two, no_gather = (safetensors.torch.load_file(tmp_path / f"{n}.safetensors")
                           for n in ("one", "two", "nogather"))
    with safetensors.safe_open(tmp_path / "two.safetensors", "pt") as f:
        assert f.metadata()["num_processes"] == "2"
    assert one.keys() == two.keys() and len([k for k in one if k.endswith("/loss")]) == 3
    for key in one:
        # fp32 sums in another order: agreement to ~1e-5 of each tensor's scale
        scale = one[key].abs().max().item()
        assert torch.allclose(one[key], two[key], rtol=1e-4, atol=1e-4 * scale + 1e-9), key
    # negative control: without the gather the same comparison fails for every objective
    for key in (k for k in one if k.endswith("/loss")):
        assert not torch.allclose(one[key], no_gather[key], rtol=1e-2), key


@pytest.mark.slow
def test_kill_and_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    flags = ["--epochs", "2", "--checkpointing-steps", "3", "--no-knn-before-training"]
    run(pretrain_command(tmp_path / "straight", *flags))

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(pretrain_command(interrupted, *flags), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "step_00000003" / "trainer_state.json").exists():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "model.safetensors").exists(), "killed too late: the run had finished"

    run(pretrain_command(interrupted, *flags, "--resume-from-checkpoint", "latest"))
    straight = safetensors.torch.load_file(tmp_path / "straight" / "model.safetensors")
    resumed = safetensors.torch.load_file(interrupted / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert len(list((interrupted / "checkpoints").glob("step_*"))) <= 2, "checkpoints_total_limit keeps two"


@pytest.mark.slow
def test_short_digits_run_beats_the_untrained_model(tmp_path):
    output = tmp_path / "run"
    run(pretrain_command(output, "--epochs", "6", "--max-train-samples", "1437", "--batch-size", "128",
                         "--knn-train-samples", "1437", "--report-to", "tensorboard", "--knn-every", "3"))
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["knn_top1_k1"] > metrics["knn_top1_untrained"] + 0.02, metrics
    assert [h["epoch"] for h in metrics["knn_history"]] == [3, 6]
    assert list((output / "logs").rglob("events.out.tfevents.*")), "tensorboard logs expected"
    model = hybridzoo.load(output)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    card = (output / "README.md").read_text()
    assert "knn_top1_k1" in card and "pretrain.py" in card and "digits" in card


@pytest.mark.slow
def test_bf16_run_with_large_feature_norms_stays_finite_and_pushes_to_the_hub(tmp_path, hub):
    output = tmp_path / "bf16"
    hub_env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "dummy", "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_DISABLE_TELEMETRY": "1"}
    run(pretrain_command(output, "--epochs", "1", "--mixed-precision", "bf16", "--no-knn-before-training",
                         "--model-overrides", '{"alpha_init": 1.0, "learn_alpha": false}', "--lr", "0.05",
                         "--push-to-hub", "user/bf16-run"), env={**os.environ, **hub_env})
    metrics = json.loads((output / "metrics.json").read_text())
    assert math.isfinite(metrics["final_loss"])
    weights = safetensors.torch.load_file(output / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    # the pushed weights are the saved ones
    pushed = hybridzoo.load("hf-hub:user/bf16-run", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert all(torch.equal(pushed.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.slow
def test_pretrain_runs_on_two_cpu_processes(tmp_path):
    output = tmp_path / "ddp"
    run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         *pretrain_command(output, "--epochs", "1", "--checkpointing-steps", "2", "--no-knn-before-training")[1:]])
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["steps"] == 256 // (32 * 2), "each process takes its shard of every epoch"
    assert (output / "checkpoints" / "step_00000004" / "random_states_1.pkl").exists()
    assert hybridzoo.load(output).geometry.name == "lorentz"
