"""The zoo registry, model construction and the contract of HybridModel."""
import json
import math
from pathlib import Path

import pytest
import timm.data
import torch

import hybridzoo
from hybridzoo.geometry import Euclidean, Lorentz, Product, Sphere

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
BACKBONES = ["resnet10t", "resnet18", "resnet50", "convnext_tiny", "vit_small_patch16_224"]
HEADS = ["euclidean", "lorentz", "product"]
LIGHT_BACKBONES = {"resnet10t", "resnet18"}


def independent_manifold_error(factor: dict, x: torch.Tensor) -> torch.Tensor:
    """Constraint violation of points of one factor, written from design.md §1 (not from the library)."""
    x = x.double()
    if factor["geometry"] == "lorentz":
        assert (x[:, 0] > 0).all(), "Lorentz points must be on the upper sheet (x0 > 0)"
        return (-x[:, 0] ** 2 + (x[:, 1:] ** 2).sum(-1) + 1 / factor["curvature"]).abs() * factor["curvature"]
    if factor["geometry"] == "sphere":
        return ((x ** 2).sum(-1) - 1 / factor["curvature"]).abs() * factor["curvature"]
    return (x.norm(dim=-1) - 1).abs()


def point_dims(factors: list[dict]) -> list[int]:
    return [f["dim"] + (f["geometry"] in ("lorentz", "sphere")) for f in factors]


def test_list_models_is_sorted_and_complete():
    names = hybridzoo.list_models()
    assert names == sorted(names)
    for backbone in BACKBONES:
        for head in HEADS:
            assert f"{backbone}-{head}" in names
    assert hybridzoo.list_models("*-lorentz") == sorted(n for n in names if n.endswith("-lorentz"))
    assert hybridzoo.list_models("resnet1*-product") == ["resnet10t-product", "resnet18-product"]
    assert hybridzoo.list_models("nothing-*") == []


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_zoo_files_are_consistent(path):
    config = json.loads(path.read_text())
    assert config["name"] == path.stem
    assert config["name"] == f"{config['backbone']}-{config['name'].rsplit('-', 1)[1]}"
    assert set(config["weights"]) == {"hub_repo", "revision", "sha256"}
    if config["weights"]["hub_repo"]:
        assert len(config["weights"]["revision"]) == 40 and len(config["weights"]["sha256"]) == 64
    assert config["head"]["factors"], "a head needs factors"
    assert sum(f["dim"] for f in config["head"]["factors"]) == 128, "zoo heads compare at equal tangent width"


def _zoo_params():
    for name in hybridzoo.list_models():
        backbone = name.rsplit("-", 1)[0]
        marks = [] if backbone in LIGHT_BACKBONES else [pytest.mark.slow]
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_zoo_params()))
def test_every_zoo_entry_builds_and_lands_on_its_manifold(name):
    config = hybridzoo.get_model_config(name)
    overrides = {"img_size": 32} if "vit" in name else {}
    model = hybridzoo.load(name, pretrained=False, **overrides).eval()
    size = 32
    with torch.no_grad():
        points = model(torch.randn(3, 3, size, size))
    factors = config["head"]["factors"]
    assert points.dtype == torch.float32
    assert points.shape == (3, sum(point_dims(factors)))
    assert torch.isfinite(points).all()
    for factor, part in zip(factors, torch.split(points, point_dims(factors), dim=-1)):
        assert independent_manifold_error(factor, part).max() < 1e-5, factor["geometry"]
    features = model.forward_features(torch.randn(2, 3, size, size))
    assert features.shape == (2, model.feature_dim)


def test_geometry_types_follow_the_head():
    def geometry(name):
        return hybridzoo.load(name, pretrained=False).geometry

    assert isinstance(geometry("resnet10t-euclidean"), Euclidean)
    assert isinstance(geometry("resnet10t-lorentz"), Lorentz)
    product = geometry("resnet10t-product")
    assert isinstance(product, Product)
    assert [type(f) for f in product.factors] == [Euclidean, Lorentz, Sphere]
    hybrid = geometry("resnet10t-hybrid")
    assert [type(f) for f in hybrid.factors] == [Euclidean, Lorentz]


def test_hybrid_head_by_config_alone(tiny_model_factory):
    head = {"hidden_dim": 32, "num_layers": 1, "batch_norm": False,
            "factors": [{"geometry": "euclidean", "dim": 8},
                        {"geometry": "lorentz", "dim": 6, "curvature": 0.5, "clip_radius": 2.0}]}
    model = hybridzoo.create_model("resnet10t", head=head).eval()
    points = model(torch.randn(2, 3, 32, 32))
    euclidean, lorentz = model.geometry.split(points)
    assert euclidean.shape == (2, 8) and lorentz.shape == (2, 7)
    assert torch.allclose(euclidean.norm(dim=-1), torch.ones(2))
    assert torch.allclose(-lorentz[:, 0] ** 2 + (lorentz[:, 1:] ** 2).sum(-1), torch.full((2,), -2.0), atol=1e-5)
    # the clip radius bounds the geodesic radius of the hyperbolic factor: d(o, x) = acosh(sqrt(c) x0)/sqrt(c)
    radius = torch.acosh(math.sqrt(0.5) * lorentz[:, 0].double()) / math.sqrt(0.5)
    assert (radius <= 2.0 + 1e-5).all()


def test_unknown_name_lists_close_matches():
    with pytest.raises(hybridzoo.UnknownModelError, match="resnet50-lorentz") as info:
        hybridzoo.load("resnet50-lorenz")
    assert "list_models" in str(info.value)
    with pytest.raises(hybridzoo.UnknownModelError):
        hybridzoo.get_model_config("definitely-not-a-model")


def test_pretrained_without_published_weights_says_how_to_proceed():
    with pytest.raises(hybridzoo.WeightsUnavailableError, match="pretrained=False"):
        hybridzoo.load("resnet18-lorentz")


def test_pretrained_cfg_drives_timm_preprocessing(tiny_model_factory):
    model = tiny_model_factory("euclidean")
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 32, 32)
    assert config["mean"] == model.pretrained_cfg["mean"]
    transform = timm.data.create_transform(**config)
    from PIL import Image

    tensor = transform(Image.new("RGB", (100, 80), (255, 0, 0)))
    assert tensor.shape == (3, 32, 32)
    # red channel normalised with the model's own statistics
    expected_red = (1.0 - config["mean"][0]) / config["std"][0]
    assert torch.allclose(tensor[0], torch.full((32, 32), expected_red), atol=1e-4)


def test_single_channel_backbone_adapts_preprocessing():
    model = hybridzoo.create_model("resnet10t", head="euclidean", backbone_kwargs={"in_chans": 1})
    assert model.pretrained_cfg["input_size"][0] == 1
    assert len(model.pretrained_cfg["mean"]) == len(model.pretrained_cfg["std"]) == 1
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 128)


def test_overrides_reach_head_and_backbone():
    model = hybridzoo.load("resnet10t-lorentz", pretrained=False, curvature=0.5, clip_radius=1.0, dim=16,
                           drop_rate=0.3)
    assert model.geometry.curvature.item() == pytest.approx(0.5)
    assert model.head.guards[0].clip_radius == 1.0
    assert model.head.out_dim == 17
    assert model.backbone.drop_rate == 0.3
    with pytest.raises(ValueError, match="factors"):
        hybridzoo.load("resnet10t-product", pretrained=False, curvature=0.5)


def test_feature_width_is_measured_not_assumed():
    # timm pitfall (design.md §7): with num_classes=0 MobileNetV3 returns head_hidden_size features
    model = hybridzoo.create_model("mobilenetv3_small_050", head="lorentz").eval()
    assert model.feature_dim == model.backbone.head_hidden_size != model.backbone.num_features
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 129)


def test_outputs_are_fp32_under_bf16_autocast_and_learnable_scalars_train(tiny_model_factory):
    model = tiny_model_factory("lorentz")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        points = model(torch.randn(4, 3, 32, 32))
        logits = model.geometry.logits(points, points, temperature=0.1)
    assert points.dtype == logits.dtype == torch.float32
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    loss.backward()
    curvature_grad = model.geometry._curvature.log_c.grad
    alpha_grad = model.head.guards[0].log_alpha.grad
    assert curvature_grad is not None and torch.isfinite(curvature_grad) and curvature_grad != 0
    assert alpha_grad is not None and torch.isfinite(alpha_grad) and alpha_grad != 0


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="timm"):
        hybridzoo.create_model("resnet_does_not_exist", head="lorentz")
    with pytest.raises(ValueError, match="unknown head"):
        hybridzoo.create_model("resnet10t", head="poincare")


def test_mismatched_channels_and_dtypes_are_clear_errors():
    with pytest.raises(ValueError, match="in_chans=1"):
        hybridzoo.create_model("resnet10t", head="euclidean", backbone_kwargs={"in_chans": 1},
                               preprocessing={"input_size": (3, 32, 32)})
    model = hybridzoo.create_model("resnet10t", head="euclidean").eval()
    with pytest.raises(hybridzoo.ImageInputError, match="float64"):
        model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(2, 3, 32, 32).bfloat16()).dtype == torch.float32


def test_model_config_file_builds_without_weights(tmp_path):
    config = hybridzoo.get_model_config("resnet10t-hybrid")
    config["head"]["factors"][1]["curvature"] = 0.25
    path = tmp_path / "my-model.json"
    path.write_text(json.dumps(config))
    model = hybridzoo.load(str(path), pretrained=False)
    assert model.geometry.factors[1].curvature.item() == pytest.approx(0.25)
    with pytest.raises(hybridzoo.WeightsUnavailableError, match="pretrained=False"):
        hybridzoo.load(str(path))
