"""Connectors that set the visual token budget (MM1): avg_pool, c_abstractor, pixel_shuffle, attn_pool.

Each connector's output shape and token count in every image mode (or its clear refusal), the
processor's `<image>` / `<video>` counts against the model's features over 14 image sizes, a
gradient in every connector parameter, the budget keys' checks, the transformers exports'
refusals, and a tiny stage-1 run through `llavakit train` with the C-Abstractor.

The tiny tower sees 32-pixel crops in 8-pixel patches: a 4x4 map of 32-wide features per crop.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import COLOURS, CONFIGS, Sample, recipe_overrides, write_llava_data
from llavakit.cli import main
from llavakit.interop.transformers_llava import export_to_transformers
from llavakit.interop.transformers_next import export_to_transformers_llava_next
from llavakit.model import anyres
from llavakit.model.build import ModelSpec, model_config
from llavakit.model.connectors import (
    CONNECTORS,
    ConnectorInput,
    build_connector,
    connector_output,
    register_connector,
)
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config, tiny_text_config, tiny_vision_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATCH_SIDE = 4  # 32-pixel crops, 8-pixel patches
# connector -> (its budget keys on the tiny tower, tokens per crop, output grid side or None)
BUDGETS = {
    "avg_pool": ({"connector_tokens": 9}, 9, 3),  # 4x4 -> 3x3: overlapping adaptive windows
    "c_abstractor": ({"connector_tokens": 4}, 4, 2),
    "pixel_shuffle": ({"connector_ratio": 2}, 4, 2),
    "attn_pool": ({"connector_tokens": 5}, 5, None),  # 5 learned queries: no grid
}
GRID_CONNECTORS = [name for name, (_, _, side) in BUDGETS.items() if side is not None]
GRID_MODES = ["hd", "anyres", "anyres_max_2"]
# (height, width): square, small, wide, tall, extreme, odd.
SIZES = [
    (32, 32),
    (20, 20),
    (64, 64),
    (32, 80),
    (80, 32),
    (20, 200),
    (200, 20),
    (60, 100),
    (100, 60),
    (45, 70),
    (70, 45),
    (96, 33),
    (33, 96),
    (128, 128),
]
# LLaVA-1.5-HD's rule worked by hand for the connectors' grids (see tests/test_highres_model.py for the rule):
# (connector side, (height, width)) -> tokens. (32, 80): a 1x3 grid; at side 3 the merged 3x9 map keeps
# int(80 * 3 / 32) = 7 columns (1 dropped each side): 3 rows x (7 + 1 row end) + 9 global = 33; at side 2
# the 2x6 map keeps int(80 * 2 / 32) = 5, (6 - 5) // 2 = 0 dropped: 2 x 7 + 4 = 18. (64, 64): a 2x2 grid,
# no padding: 6 x 7 + 9 = 51 and 4 x 5 + 4 = 24.
HD_BY_HAND = {(3, (32, 80)): 33, (2, (32, 80)): 18, (3, (64, 64)): 51, (2, (64, 64)): 24}


def _config(image_token_id: int, connector: str, **kwargs):
    return tiny_llava_config(image_token_id, connector=connector, **BUDGETS[connector][0], **kwargs)


def _model(config) -> LlavaKitForCausalLM:
    torch.manual_seed(0)
    return LlavaKitForCausalLM(config).eval()


def _image(size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8))


def _ids(tokenizer, count: int, image_token_id: int) -> torch.Tensor:
    """A prompt with one image's `count` placeholders between text, as the processor would write it."""
    text = tokenizer("describe the picture", add_special_tokens=False)["input_ids"]
    return torch.tensor([[tokenizer.bos_token_id, *([image_token_id] * count), *text]])


@pytest.fixture(scope="module")
def image_token(tiny_tokenizer) -> int:
    return tiny_tokenizer.convert_tokens_to_ids("<image>")


@pytest.fixture(scope="module")
def video_token(tiny_tokenizer) -> int:
    return tiny_tokenizer.convert_tokens_to_ids("<video>")


# ---- the registry --------------------------------------------------------------------------------


@pytest.mark.parametrize("connector", sorted(BUDGETS))
def test_each_connector_states_its_output(connector):
    keys, tokens, side = BUDGETS[connector]
    budget = {"num_tokens": keys.get("connector_tokens"), "ratio": keys.get("connector_ratio")}
    inputs = ConnectorInput(32, 64, grid=(PATCH_SIDE, PATCH_SIDE), **budget)
    output = connector_output(connector, inputs)
    assert output.num_tokens == tokens and output.square_side == side
    features = torch.randn(3, PATCH_SIDE * PATCH_SIDE, 32)
    assert build_connector(connector, inputs)(features).shape == (3, tokens, 64)


def test_defaults_are_144_tokens_and_ratio_2():
    for connector in ("avg_pool", "c_abstractor", "attn_pool"):
        output = connector_output(connector, ConnectorInput(1024, 4096, grid=(24, 24)))
        assert output.num_tokens == 144
    assert connector_output("pixel_shuffle", ConnectorInput(1024, 4096, grid=(24, 24))).grid == (12, 12)


def test_mlp_connectors_keep_their_keys_and_counts(image_token):
    for connector, depth in (("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)):
        config = tiny_llava_config(image_token, connector=connector)
        keys = sorted(LlavaKitForCausalLM(config).multi_modal_projector.state_dict())
        assert keys == sorted(f"layers.{i}.{p}" for i in range(depth) for p in ("weight", "bias"))
        assert config.num_image_tokens == config.num_vision_features == 16 and config.feature_side == PATCH_SIDE


def test_factories_of_the_two_argument_signature_still_register():
    name = "test_two_argument_identity"
    try:
        register_connector(name)(lambda vision_dim, text_dim: torch.nn.Linear(vision_dim, text_dim, bias=False))
        module = build_connector(name, ConnectorInput(8, 16, grid=(2, 2)))
        assert module.weight.shape == (16, 8)
        assert connector_output(name, ConnectorInput(8, 16, grid=(2, 2))).num_tokens == 4
    finally:
        CONNECTORS.pop(name, None)


# ---- budget keys: checked at config construction ---------------------------------------------------


@pytest.mark.parametrize(
    "connector,keys,message",
    [
        ("avg_pool", {"connector_tokens": 8}, "connector_tokens=8 must be a positive perfect square"),
        ("c_abstractor", {"connector_tokens": 0}, "connector_tokens=0 must be a positive perfect square"),
        ("avg_pool", {}, r"connector_tokens=144 \(the connector's default\) .* larger than the tower's 4x4"),
        ("c_abstractor", {"connector_tokens": 25}, "connector_tokens=25 .* larger than the tower's 4x4"),
        ("pixel_shuffle", {"connector_ratio": 3}, "connector_ratio=3 must be a positive divisor of the tower's 4x4"),
        ("pixel_shuffle", {"connector_tokens": 4}, "connector_tokens=4 does not apply to connector 'pixel_shuffle'"),
        ("avg_pool", {"connector_tokens": 4, "connector_ratio": 2}, "connector_ratio=2 does not apply"),
        ("attn_pool", {"connector_tokens": -1}, "connector_tokens=-1 must be positive for connector 'attn_pool'"),
        ("mlp2x_gelu", {"connector_tokens": 4}, "connector_tokens=4 does not apply to connector 'mlp2x_gelu'"),
        ("linear", {"connector_ratio": 2}, "connector_ratio=2 does not apply to connector 'linear'"),
        ("no_such_connector", {}, "unknown connector 'no_such_connector'"),
    ],
)
def test_budget_keys_are_checked_naming_key_and_value(image_token, connector, keys, message):
    with pytest.raises(ValueError, match=message):
        tiny_llava_config(image_token, connector=connector, **keys)


@pytest.mark.parametrize("connector", GRID_CONNECTORS)
def test_grid_connectors_need_a_patch_grid(image_token, connector):
    """CLIP with strategy `full` keeps the CLS feature: 17 features form no grid to pool or shuffle."""
    with pytest.raises(ValueError, match=f"connector '{connector}' works on the tower's patch grid.*17 features"):
        _config(image_token, connector, vision_feature_select_strategy="full")


@pytest.mark.parametrize("mode", [*GRID_MODES, "video"])
def test_attn_pool_refuses_the_modes_that_merge_or_pool_maps(image_token, video_token, mode):
    setting = {"video_token_id": video_token} if mode == "video" else {"image_mode": mode}
    named = "video input" if mode == "video" else f"image_mode '{mode}'"
    with pytest.raises(ValueError, match=f"connector 'attn_pool' cannot serve {named}.*without a spatial grid"):
        _config(image_token, "attn_pool", **setting)


def test_video_pooling_that_leaves_no_features_is_refused(image_token, video_token):
    with pytest.raises(ValueError, match="leaves no features of the 1x1 map connector 'avg_pool'"):
        tiny_llava_config(
            image_token, connector="avg_pool", connector_tokens=1, video_token_id=video_token, video_pool_mode="average"
        )


def test_model_spec_passes_the_budget_to_the_config(tmp_path, image_token):
    spec = ModelSpec(
        vision=tiny_vision_config().to_dict(),
        language=tiny_text_config().to_dict(),
        connector="c_abstractor",
        connector_tokens=4,
        image_token_id=image_token,
    )
    config = model_config(spec)
    assert (config.connector, config.connector_tokens, config.connector_ratio) == ("c_abstractor", 4, None)
    model = _model(config)
    model.save_pretrained(tmp_path)
    loaded = LlavaKitForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.connector_tokens == 4 and loaded.config.num_image_tokens == 4
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_image_features(pixels), model.get_image_features(pixels))


# ---- output shape and token count per image mode ----------------------------------------------------


@pytest.mark.parametrize("connector", sorted(BUDGETS))
def test_fixed_mode_shape(image_token, connector):
    _, tokens, _ = BUDGETS[connector]
    model = _model(_config(image_token, connector))
    with torch.no_grad():
        features = model.get_image_features(torch.randn(3, 3, 32, 32))
    assert features.shape == (3, tokens, 64) and model.config.image_token_count() == tokens


@pytest.mark.parametrize("mode", GRID_MODES)
@pytest.mark.parametrize("connector", GRID_CONNECTORS)
def test_grid_mode_shapes_follow_the_connector_grid(tiny_tokenizer, image_token, connector, mode):
    """The crops' connector outputs are merged: side^2 base tokens, a map of side-sized cells."""
    _, tokens, side = BUDGETS[connector]
    config = _config(image_token, connector, image_mode=mode)
    model = _model(config)
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")
    assert config.feature_side == side and config.patch_side == PATCH_SIDE
    size = (60, 100)
    batch = processor("<image>", images=_image(size))
    with torch.no_grad():
        (features,) = model.get_anyres_image_features(
            batch["pixel_values"], batch["image_sizes"], batch["image_num_crops"]
        )
    rows, cols = anyres.anyres_grid_shape(size, config.grid_pinpoints, 32)
    height, width = anyres.unpadded_shape(size, (rows * side, cols * side))
    if config.max_crops is not None:
        height, width = anyres.reduced_shape(height, width, config.max_crops, side)
    assert features.shape == (tokens + height * (width + 1), 64)
    assert features.shape[0] == config.image_token_count(size)


@pytest.mark.parametrize("connector", GRID_CONNECTORS)
def test_hd_counts_by_hand(image_token, connector):
    _, _, side = BUDGETS[connector]
    config = _config(image_token, connector, image_mode="hd")
    for (hand_side, size), tokens in HD_BY_HAND.items():
        if hand_side == side:
            assert config.image_token_count(size) == tokens, size


@pytest.mark.parametrize("connector", GRID_CONNECTORS)
def test_video_frames_pool_the_connector_map(image_token, video_token, connector):
    _, _, side = BUDGETS[connector]
    model = _model(_config(image_token, connector, video_token_id=video_token))
    with torch.no_grad():
        (video,) = model.get_video_features(torch.randn(1, 3, 3, 32, 32))
    pooled = math.ceil(side / 2)  # bilinear, stride 2: rounds up
    assert video.shape == (3 * pooled * pooled + 1, 64) == (model.config.video_token_count(3), 64)


# ---- the processor's counts equal the model's features (14 image sizes) ----------------------------


@pytest.mark.parametrize("connector", sorted(BUDGETS))
def test_fixed_mode_processor_counts_equal_features(tiny_tokenizer, image_token, connector):
    """One sample with 14 images of different sizes (multi-image): the forward raises on any mismatch."""
    config = _config(image_token, connector)
    model = _model(config)
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")
    batch = processor("<image>" * len(SIZES) + " describe", images=[_image(size) for size in SIZES])
    with torch.no_grad():
        model(**batch)
        features = model.get_image_features(batch["pixel_values"])
    placeholders = int((batch["input_ids"] == image_token).sum())
    assert placeholders == features.shape[0] * features.shape[1] == len(SIZES) * BUDGETS[connector][1]


@pytest.mark.parametrize("mode", GRID_MODES)
@pytest.mark.parametrize("connector", GRID_CONNECTORS)
def test_grid_mode_config_counts_equal_features(tiny_tokenizer, image_token, connector, mode):
    """What the config counts (and so the processor must write) is what the model makes, for 14 sizes."""
    config = _config(image_token, connector, image_mode=mode)
    model = _model(config)
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")
    for size in SIZES:
        batch = processor("<image>", images=_image(size))  # its pixels and crops; the counts are the config's
        pixels = {key: batch[key] for key in ("pixel_values", "image_sizes", "image_num_crops")}
        count = config.image_token_count(size)
        with torch.no_grad():
            (features,) = model.get_anyres_image_features(**pixels)
            model(input_ids=_ids(tiny_tokenizer, count, image_token), **pixels)  # raises on a mismatch
        assert features.shape[0] == count, size


@pytest.mark.parametrize("mode", GRID_MODES)
@pytest.mark.parametrize("connector", GRID_CONNECTORS)
def test_grid_mode_processor_counts_equal_features(tiny_tokenizer, image_token, connector, mode):
    config = _config(image_token, connector, image_mode=mode)
    model = _model(config)
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")
    for size in SIZES:
        assert processor.image_token_count(size) == config.image_token_count(size), size
        batch = processor("<image> describe", images=_image(size))
        with torch.no_grad():
            model(**batch)  # raises on a mismatch
    batch = processor("<image> <image>", images=[_image(SIZES[3]), _image(SIZES[4])])  # multi-image
    with torch.no_grad():
        model(**batch)


@pytest.mark.parametrize("connector", GRID_CONNECTORS)
def test_video_processor_counts_equal_features(tiny_tokenizer, image_token, video_token, connector):
    config = _config(image_token, connector, video_token_id=video_token)
    model = _model(config)
    processor = LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "chatml")
    frames = np.random.default_rng(0).integers(0, 256, (4, 30, 40, 3), dtype=np.uint8)
    batch = processor("<image> <video> describe", images=_image((40, 30)), videos=frames)
    with torch.no_grad():
        model(**batch)  # raises on a mismatch
    assert int((batch["input_ids"] == video_token).sum()) == config.video_token_count(4)


# ---- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("connector", sorted(BUDGETS))
def test_gradient_reaches_every_connector_parameter(tiny_tokenizer, image_token, connector):
    config = _config(image_token, connector)
    model = _model(config).train()
    input_ids = _ids(tiny_tokenizer, 2 * config.num_image_tokens, image_token)
    loss = model(input_ids=input_ids, pixel_values=torch.randn(2, 3, 32, 32), labels=input_ids).loss
    loss.backward()
    for name, param in model.multi_modal_projector.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


# ---- exports -------------------------------------------------------------------------------------


@pytest.mark.parametrize("connector", sorted(BUDGETS))
def test_transformers_llava_export_refuses_naming_the_connector(image_token, connector):
    model = _model(_config(image_token, connector))
    with pytest.raises(ValueError, match=f"connector '{connector}' cannot be exported.*own visual token budget"):
        export_to_transformers(model)


@pytest.mark.parametrize("connector", GRID_CONNECTORS)
def test_transformers_next_export_refuses_naming_the_connector(image_token, connector):
    model = _model(_config(image_token, connector, image_mode="anyres"))
    with pytest.raises(ValueError, match=f"connector '{connector}' \\(it sets its own visual token budget"):
        export_to_transformers_llava_next(model)


# ---- training ------------------------------------------------------------------------------------


def test_stage1_with_c_abstractor_through_llavakit_train(tmp_path):
    """Feature alignment with a 4-token C-Abstractor: the loss falls, the saved connector is the C-Abstractor."""
    names = [list(COLOURS)[i % len(COLOURS)] for i in range(48)]
    samples = [Sample(f"c{i}", "<image>", name, f"{i}.png", COLOURS[name], (40, 32)) for i, name in enumerate(names)]
    data = write_llava_data(tmp_path / "world", samples, "captions.json")
    out = tmp_path / "run"
    overrides = recipe_overrides(
        data,
        out,
        "model.connector=c_abstractor",
        "model.connector_tokens=4",
        "optimization.epochs=3",
        "output.save_steps=0",
        "output.plot=false",
    )
    assert main(["train", str(CONFIGS / "tiny" / "pretrain.yaml"), *overrides]) == 0
    losses = [loss for _, loss in json.loads((out / "losses.json").read_text())]
    assert len(losses) == 18  # 48 samples x 3 epochs / 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses  # 6.43 -> 5.88 on this CPU
    config = json.loads((out / "config.json").read_text())
    assert (config["connector"], config["connector_tokens"]) == ("c_abstractor", 4)
    processor = LlavaKitProcessor.from_pretrained(out)
    assert processor.num_image_tokens == 4
    saved = load_file(out / "trainable.safetensors")
    assert "multi_modal_projector.position.weight" in saved and "multi_modal_projector.readout.layers.1.bias" in saved
