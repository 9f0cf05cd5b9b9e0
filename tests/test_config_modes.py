"""Recipe keys of the high-resolution and video systems: the papers' settings, and keys that do not
fit the model's image mode (or its lack of video) refused with both keys named."""

from __future__ import annotations

import pytest

from conftest import CONFIGS
from llavakit.errors import ConfigError
from llavakit.model.build import ModelSpec, load_model_spec, model_config
from llavakit.tiny import tiny_vision_config
from llavakit.train.config import load_config
from llavakit.train.model_setup import build_model_and_processor
from llavakit.train.recipes import resolve_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# recipe -> (image mode, vision, language, template, lr, vision lr or None when frozen, global batch, max length)
HIGH_RES = {
    "llava-1.5-hd/pretrain-13b.yaml": ("hd", "openai/clip-vit-large-patch14", "lmsys/vicuna-13b-v1.5", "plain",
                                       1e-3, None, 256, 4096),
    "llava-1.5-hd/finetune-13b.yaml": ("hd", "openai/clip-vit-large-patch14", "lmsys/vicuna-13b-v1.5", "vicuna_v1",
                                       2e-5, None, 128, 4096),
    "llava-next/pretrain-vicuna-7b.yaml": ("anyres", "openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5",
                                           "plain", 1e-3, None, 256, 4096),
    "llava-next/finetune-vicuna-7b.yaml": ("anyres", "openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5",
                                           "vicuna_v1", 2e-5, 2e-6, 128, 4096),
    "llava-onevision/7b-stage1.yaml": ("anyres_max_9", "google/siglip-so400m-patch14-384", "Qwen/Qwen2-7B-Instruct",
                                       "plain", 1e-3, None, 512, 8192),
    "llava-onevision/7b-stage1.5.yaml": ("anyres_max_9", "google/siglip-so400m-patch14-384",
                                         "Qwen/Qwen2-7B-Instruct", "qwen_1_5", 1e-5, 2e-6, 256, 32768),
    "llava-onevision/0.5b-stage1.5.yaml": ("anyres_max_9", "google/siglip-so400m-patch14-384",
                                           "Qwen/Qwen2-0.5B-Instruct", "qwen_1_5", 1e-5, 2e-6, 256, 32768),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HIGH_RES))
def test_high_resolution_recipes_hold_the_papers_settings(name):
    mode, vision, language, template, lr, vision_lr, batch, length = HIGH_RES[name]
    config = resolve_config(load_config(CONFIGS / name))
    model, optim = config.model, config.optimization
    assert (model.image_mode, model.vision, model.language, config.data.template) == (mode, vision, language, template)
    assert (optim.lr, optim.global_batch_size, optim.epochs, config.data.max_length) == (lr, batch, 1, length)
    assert config.stage.train_vision is (vision_lr is not None)
    if vision_lr is not None:
        assert optim.vision_lr == vision_lr
    assert model.image_token_id is None  # the tokenizer's id of <image>
    if mode == "anyres_max_9":
        assert model.image_grid_pinpoints == "(1x1),...,(6x6)" and model.video_token == "<video>"
        assert (model.video.pool_mode, model.video.pool_stride) == ("bilinear", 2)


@pytest.mark.parametrize("size", ["0.5b", "7b"])
def test_onevision_later_stages_chain_checkpoints_and_sample_32_frames(size):
    single = load_config(CONFIGS / f"llava-onevision/{size}-si.yaml")
    onevision = load_config(CONFIGS / f"llava-onevision/{size}-ov.yaml")
    assert single.model.checkpoint.endswith(f"{size}-stage1.5") and onevision.model.checkpoint.endswith(f"{size}-si")
    assert onevision.data.video.frames_upbound == 32 and onevision.data.max_length == 32768
    assert any(dataset.video_folder for dataset in onevision.data.datasets)
    for config in (single, onevision):
        assert (config.optimization.lr, config.optimization.vision_lr, config.stage.train_vision) == (1e-5, 2e-6, True)


TINY_FINETUNE = CONFIGS / "tiny" / "finetune.yaml"


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            ["model.image_mode=anyres", "data.image_aspect=pad"],
            ["data.image_aspect='pad'", "model.image_mode='anyres'"],
        ),
        (["model.image_grid_pinpoints=[[64, 32]]"], ["model.image_grid_pinpoints", "model.image_mode='fixed'"]),
        (["model.image_mode=anyres_max_4", "model.hd_max_cells=4"], ["model.hd_max_cells=4", "'anyres_max_4'"]),
        (["model.image_base_first=true"], ["model.image_base_first=True", "model.image_mode='fixed'"]),
        (["model.video.pool_stride=3"], ["model.video.pool_stride=3", "model.video_token is null"]),
        (["data.video.frames_upbound=8"], ["data.video.frames_upbound=8", "model.video_token is null"]),
        (["data.datasets.0.video_folder=clips"], ["data.datasets.0.video_folder='clips'", "model.video_token"]),
    ],
)
def test_a_key_that_does_not_fit_the_mode_names_both_keys(overrides, fragments):
    with pytest.raises(ConfigError) as error:
        load_config(TINY_FINETUNE, overrides)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_every_misfit_is_named_at_once():
    overrides = [
        "model.image_mode=hd",
        "data.image_aspect=square",
        "data.video.fps=2",
        "model.multi_image_base_only=true",
    ]
    message = str(pytest.raises(ConfigError, load_config, TINY_FINETUNE, overrides).value)
    assert "data.image_aspect='square'" in message and "data.video.fps=2.0" in message
    assert "model.multi_image_base_only" not in message  # read by the hd mode


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("data.image_mode=anyres", "data.image_mode is now data.image_aspect"),
        ("model.video_pool_stride=2", "model.video_pool_stride is now model.video.pool_stride"),
    ],
)
def test_renamed_keys_say_where_they_went(override, hint):
    with pytest.raises(ConfigError, match=hint):
        load_config(TINY_FINETUNE, [override])


def test_image_aspect_values_are_checked():
    with pytest.raises(ConfigError, match=r"data.image_aspect' must be one of pad, square"):
        load_config(TINY_FINETUNE, ["data.image_aspect=stretch"])


def test_model_spec_files_refuse_misfit_keys_too(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"spec: {CONFIGS / 'models' / 'tiny-next.yaml'}\nhd_max_cells: 4\n")
    with pytest.raises(ValueError, match=r"spec.yaml: hd_max_cells=4 .* does not apply to image_mode='anyres'"):
        load_model_spec(spec)


def test_crop_size_sets_the_tower_input_size(tmp_path):
    spec = load_model_spec(CONFIGS / "models" / "tiny-onevision.yaml", ["crop_size=48"])
    config = model_config(ModelSpec(**{**vars(spec), "image_token_id": 5, "video_token_id": 6}))
    assert (config.crop_size, config.feature_side) == (48, 6)
    assert config.grid_pinpoints[-1] == (144, 144)  # (3x3) crops of 48 px
    # a pretrained tower keeps its own position embeddings: another size is refused, its own accepted
    tiny_vision_config("siglip").save_pretrained(tmp_path)
    named = ModelSpec(**{**vars(spec), "vision": str(tmp_path), "image_token_id": 5, "video_token_id": 6})
    with pytest.raises(ValueError, match=r"model.crop_size=48 differs from the image_size 32 of the pretrained tower"):
        model_config(named)
    named.crop_size = 32
    assert model_config(named).crop_size == 32


def test_data_keys_reach_the_processor(tmp_path):
    fixed = load_config(TINY_FINETUNE, ["model.connector_weights=null", "data.image_aspect=square"])
    assert build_model_and_processor(fixed)[1].image_config.mode == "square"
    onevision = load_config(
        CONFIGS / "tiny" / "onevision-stage1.yaml", ["data.video.frames_upbound=5", "data.video.fps=2"]
    )
    model, processor = build_model_and_processor(onevision)
    assert (processor.video.sampling.max_frames, processor.video.sampling.fps) == (5, 2.0)
    assert model.config.video_pool_stride == 2 and processor.highres.mode == "anyres_max_4"


def test_a_checkpoints_mode_is_checked_against_the_data_keys(tmp_path):
    model, processor = build_model_and_processor(load_config(CONFIGS / "tiny" / "next-pretrain.yaml"))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = load_config(TINY_FINETUNE, [f"model.checkpoint={tmp_path}", "data.image_aspect=pad"])
    with pytest.raises(ConfigError, match=r"data.image_aspect='pad' .* model.image_mode='anyres'"):
        build_model_and_processor(config)
