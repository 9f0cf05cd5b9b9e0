"""Original LLaVA-NeXT / LLaVA-OneVision folders and the original trainer's LoRA outputs, imported.

Each folder is written here in the original layout from the weights of a tiny random transformers
LlavaNext / LlavaOnevision model; the imported llavakit model gives that model's logits on images
that exercise the grid (non-square, small enough to tie between canvases, large enough to be
reduced) and on a video. The import says which conversation template it chose and why, and a
layout llavakit cannot hold is refused with the config field named.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_import_original_next.py
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    LlamaForCausalLM,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    SiglipVisionConfig,
)

from conftest import randomized
from llavakit.errors import CheckpointError
from llavakit.interop.folders import import_checkpoint
from llavakit.interop.original_llava import import_original_llava, read_original_llava_config
from llavakit.interop.original_next import read_original_layout
from llavakit.interop.template_choice import default_template
from llavakit.model import anyres
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_text_config, tiny_vision_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-5
CROP = 32
# (height, width) canvases as transformers and llavakit read them; the original config lists them [w, h].
NEXT_PINPOINTS = [(32, 64), (64, 32), (64, 64), (96, 32), (32, 96)]
# The original's "(1x1),...,(6x6)": grids of w x h crops, w outer, as (height, width) pixels.
ONEVISION_RANGE = "(1x1),...,(6x6)"
ONEVISION_PINPOINTS = [(h * CROP, w * CROP) for w in range(1, 7) for h in range(1, 7)]


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    """A random RGB image of (height, width)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def _logits(model, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _token(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


# ---------------------------------------------------------------- the original layout, written from a model


def _original_weights(hf_model, tower_inside: bool, keep_lm_head: bool = True) -> dict[str, torch.Tensor]:
    """A transformers LlavaNext / OneVision state dict renamed to the original LLaVA-NeXT layout."""
    renames = (
        ("model.language_model.", "model."),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
        ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
    )
    weights = {}
    for key, tensor in hf_model.state_dict().items():
        if (key.startswith("model.vision_tower.") and not tower_inside) or (
            key == "lm_head.weight" and not keep_lm_head
        ):
            continue
        for theirs, original in renames:
            if key.startswith(theirs):
                key = original + key.removeprefix(theirs)
                break
        weights[key] = tensor.clone().contiguous()
    return weights


def _original_config(hf_model, architecture: str, **fields) -> dict:
    """The original config.json: the language model's own fields plus LLaVA's `mm_*` ones."""
    config = hf_model.config.text_config.to_dict()
    config.update(
        architectures=[architecture],
        mm_projector_type="mlp2x_gelu",
        mm_hidden_size=hf_model.config.vision_config.hidden_size,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        use_mm_proj=True,
        tokenizer_padding_side="right",
        **fields,
    )
    return config


def _write_folder(folder: Path, config: dict, weights: dict | None, tokenizer=None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        save_file(weights, folder / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def _next_fields(tower: Path) -> dict:
    """LLaVA-1.6 (Vicuna) settings: anyres over five canvases, spatial_unpad, CLIP penultimate patches."""
    return dict(
        model_type="llava_llama",
        mm_vision_tower=str(tower),
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        image_aspect_ratio="anyres",
        image_grid_pinpoints=[[w, h] for h, w in NEXT_PINPOINTS],
        mm_patch_merge_type="spatial_unpad",
    )


@pytest.fixture(scope="module")
def hf_next(tiny_tokenizer):
    config = LlavaNextConfig(
        vision_config=tiny_vision_config("clip").to_dict(),
        text_config=tiny_text_config("llama").to_dict(),
        image_token_index=_token(tiny_tokenizer, "<image>"),
        image_grid_pinpoints=[list(p) for p in NEXT_PINPOINTS],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return randomized(LlavaNextForConditionalGeneration(config), seed=11)


@pytest.fixture(scope="module")
def next_folder(hf_next, tiny_tokenizer, tmp_path_factory) -> Path:
    """An original LLaVA-NeXT folder: frozen CLIP tower named by path, Llama LM, newline, projector."""
    root = tmp_path_factory.mktemp("next")
    hf_next.model.vision_tower.save_pretrained(root / "clip-tower")
    config = _original_config(hf_next, "LlavaLlamaForCausalLM", **_next_fields(root / "clip-tower"))
    weights = _original_weights(hf_next, tower_inside=False)
    return _write_folder(root / "llava-v1.6-tiny", config, weights, tiny_tokenizer)


def _next_batch(processor: LlavaKitProcessor, images: list[Image.Image]):
    texts = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image> or <image>? ASSISTANT:"]
    return processor(texts, images=images)


def test_next_folder_matches_transformers_llava_next(hf_next, next_folder, tmp_path):
    result = import_checkpoint(next_folder, tmp_path / "kit")
    assert result.template.name == "vicuna_v1" and "Vicuna" in result.template.reason
    assert result.template_line().startswith("template: vicuna_v1 (")
    assert result.template_line().endswith("; pass --template to choose another)")
    assert result.source_layout == "original LLaVA-NeXT / OneVision (anyres)"

    model = LlavaKitForCausalLM.from_pretrained(tmp_path / "kit").eval()
    processor = LlavaKitProcessor.from_pretrained(tmp_path / "kit")
    config = model.config
    assert (config.image_mode, config.grid_pinpoints) == ("anyres", NEXT_PINPOINTS)
    assert config.newline_in_images and config.base_first and not config.base_only_for_multi_image
    assert config.video_token_id is None  # a LLaVA-1.6 config has no video settings
    # Non-square images on 1x2 and 3x1 grids, and a small square one that ties between 1x2 and 2x1.
    images = [_image((50, 130), 1), _image((90, 40), 2), _image((20, 20), 3)]
    batch = _next_batch(processor, images)
    expected = _logits(
        hf_next,
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        image_sizes=batch["image_sizes"],
    )
    actual = _logits(model, **batch)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    flipped = _next_batch(processor, [image.transpose(Image.FLIP_LEFT_RIGHT) for image in images])
    assert (_logits(model, **flipped) - actual).abs().max() > 100 * ATOL  # the image path is live


def test_pinpoints_keep_the_originals_width_height_order():
    """The original reads a pinpoint as [width, height] and takes the first of equal canvases."""
    raw = {
        "image_aspect_ratio": "anyres",
        "mm_patch_merge_type": "spatial_unpad",
        "image_grid_pinpoints": [[32, 64], [64, 32]],
    }
    fields = read_original_layout(raw, Path("config.json")).config_fields(crop_size=CROP)
    assert fields["image_grid_pinpoints"] == [[64, 32], [32, 64]]
    # A small square image fits both canvases equally: the first, 1 crop wide and 2 high, wins.
    assert anyres.select_best_resolution((20, 20), fields["image_grid_pinpoints"]) == (64, 32)
    ranged = {**raw, "image_grid_pinpoints": "(1x1),...,(2x3)"}
    fields = read_original_layout(ranged, Path("config.json")).config_fields(crop_size=CROP)
    assert fields["image_grid_pinpoints"] == [[32, 32], [64, 32], [96, 32], [32, 64], [64, 64], [96, 64]]


# ---------------------------------------------------------------- OneVision: SigLIP, Qwen2, anyres_max_9, video


def _truncated_siglip() -> SiglipVisionConfig:
    """The tiny SigLIP as LLaVA-NeXT runs it: last layer and head dropped."""
    config = tiny_vision_config("siglip")
    config.num_hidden_layers -= 1
    config.vision_use_head = False
    return config


@pytest.fixture(scope="module")
def hf_onevision(tiny_tokenizer):
    config = LlavaOnevisionConfig(
        vision_config=_truncated_siglip().to_dict(),
        text_config=tiny_text_config("qwen2", tie_word_embeddings=True).to_dict(),
        image_token_index=_token(tiny_tokenizer, "<image>"),
        video_token_index=_token(tiny_tokenizer, "<video>"),
        image_grid_pinpoints=[list(p) for p in ONEVISION_PINPOINTS],
        vision_aspect_ratio="anyres_max_9",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    return randomized(LlavaOnevisionForConditionalGeneration(config), seed=12)


@pytest.fixture(scope="module")
def onevision_folder(hf_onevision, tiny_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """An original OneVision folder with its tuned SigLIP inside; the named hub tower's config lives locally."""
    root = tmp_path_factory.mktemp("onevision")
    tiny_vision_config("siglip").save_pretrained(root / "siglip-tower")  # the full tower's config only
    config = _original_config(
        hf_onevision,
        "LlavaQwenForCausalLM",
        model_type="llava",
        mm_vision_tower="google/siglip-so400m-patch14-384",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model",
        image_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=ONEVISION_RANGE,
        mm_patch_merge_type="spatial_unpad_anyres_max_9",
        mm_newline_position="one_token",
        mm_spatial_pool_mode="bilinear",
        mm_spatial_pool_stride=None,
    )
    # Tied embeddings: like llava-onevision-qwen2-0.5b, the weights hold no lm_head.
    weights = _original_weights(hf_onevision, tower_inside=True, keep_lm_head=False)
    folder = _write_folder(root / "llava-onevision-qwen2-tiny-ov", config, weights, tiny_tokenizer)
    return folder, root / "siglip-tower"


@pytest.fixture(scope="module")
def imported_onevision(onevision_folder, tmp_path_factory):
    folder, tower = onevision_folder
    output = tmp_path_factory.mktemp("onevision-kit")
    result = import_checkpoint(folder, output, vision_tower=str(tower), overwrite=True)
    return result, LlavaKitForCausalLM.from_pretrained(output).eval(), LlavaKitProcessor.from_pretrained(output)


def test_onevision_folder_config_and_template(imported_onevision, tiny_tokenizer):
    result, model, processor = imported_onevision
    assert result.template.name == "qwen_1_5" and processor.template_name == "qwen_1_5"
    assert result.template_line() == (
        "template: qwen_1_5 (from the Qwen2 language model (LLaVA-OneVision's format); "
        "pass --template to choose another)"
    )
    config = model.config
    assert config.image_mode == "anyres_max_9" and config.grid_pinpoints == ONEVISION_PINPOINTS
    assert config.base_only_for_multi_image and config.newline_in_images
    assert (config.video_pool_mode, config.video_pool_stride, config.video_newline) == ("bilinear", 2, "one_token")
    assert config.video_token_id == _token(tiny_tokenizer, "<video>")
    # The LLaVA-NeXT SigLIP tower: last layer and head gone, features from the new last layer.
    assert (config.vision_config.num_hidden_layers, config.vision_feature_layer) == (2, -1)
    assert config.vision_feature_select_strategy == "full" and config.tie_word_embeddings


def test_onevision_image_matches_transformers(hf_onevision, imported_onevision):
    _, model, processor = imported_onevision
    image = _image((150, 230), 4)  # a 5x6 grid of crops: 20x24 features unpadded, reduced to about 9 crops' worth
    batch = processor("<|im_start|>user\n<image>\nDescribe.<|im_end|>\n", images=image)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) < 16 + 20 * 25
    expected = _logits(
        hf_onevision, input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]
    )
    torch.testing.assert_close(_logits(model, **batch), expected, atol=ATOL, rtol=0)


def test_onevision_video_matches_transformers(hf_onevision, imported_onevision):
    _, model, processor = imported_onevision
    frames = np.random.default_rng(5).integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    batch = processor("<video>\nWhat happens?", videos=frames)
    expected = _logits(
        hf_onevision, input_ids=batch["input_ids"], pixel_values_videos=batch["pixel_values_videos"][None]
    )
    torch.testing.assert_close(_logits(model, **batch), expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- LoRA output of the original trainer

HUB_BASE = "lmsys/vicuna-7b-v1.5"


def _language_model_state(hf_model) -> dict[str, torch.Tensor]:
    """The LLM's weights of a transformers Llava-family model, as a plain causal LM names them."""
    state = {}
    for key, tensor in hf_model.state_dict().items():
        if key.startswith("model.language_model."):
            state["model." + key.removeprefix("model.language_model.")] = tensor.clone()
        elif key == "lm_head.weight":
            state[key] = tensor.clone()
    return state


def _lora_on(language_model, seed: int):
    """A peft LoRA on the attention and MLP projections, with weights far from the zero init."""
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(language_model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _lora_deltas(model) -> dict[str, torch.Tensor]:
    """`weight name -> B @ A * scale` of every LoRA layer, in the plain LLM's names."""
    return {
        name.removeprefix("base_model.model.") + ".weight": module.get_delta_weight("default").detach()
        for name, module in model.named_modules()
        if isinstance(module, LoraLinear)
    }


@pytest.fixture(scope="module")
def lora_folders(hf_next, tiny_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """(LoRA output folder, base LLM folder): the merged model is exactly `hf_next`.

    The base holds hf_next's LLM weights minus the LoRA deltas; the output holds the adapter,
    the projector and newline in non_lora_trainables.bin, and the llava config, no tokenizer.
    """
    root = tmp_path_factory.mktemp("lora")
    text_config = hf_next.config.text_config
    target = _language_model_state(hf_next)
    language_model = LlamaForCausalLM(text_config)
    language_model.load_state_dict(target)
    lora = _lora_on(language_model, seed=13)
    lora.peft_config["default"].base_model_name_or_path = str(root / "vicuna-base")
    lora.save_pretrained(root / "llava-v1.6-lora", save_embedding_layers=False)
    deltas = _lora_deltas(lora)
    assert len(deltas) == 3 * text_config.num_hidden_layers

    base = LlamaForCausalLM(text_config)
    base.load_state_dict({key: tensor - deltas.get(key, 0) for key, tensor in target.items()})
    base.save_pretrained(root / "vicuna-base")
    tiny_tokenizer.save_pretrained(root / "vicuna-base")

    originals = _original_weights(hf_next, tower_inside=False)
    non_lora = {
        "base_model.model." + key: tensor
        for key, tensor in originals.items()
        if key.startswith(("model.mm_projector.", "model.image_newline"))
    }
    torch.save(non_lora, root / "llava-v1.6-lora" / "non_lora_trainables.bin")
    hf_next.model.vision_tower.save_pretrained(root / "clip-tower")
    config = _original_config(hf_next, "LlavaLlamaForCausalLM", **_next_fields(root / "clip-tower"))
    (root / "llava-v1.6-lora" / "config.json").write_text(json.dumps(config))
    return root / "llava-v1.6-lora", root / "vicuna-base"


def _with_adapter_base(lora: Path, destination: Path, base_name: str) -> Path:
    """A copy of the LoRA output whose adapter_config.json names `base_name`."""
    shutil.copytree(lora, destination)
    path = destination / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": base_name}))
    return destination


def test_lora_output_merges_into_its_base_and_matches(hf_next, lora_folders, tmp_path):
    lora, base = lora_folders
    result = import_checkpoint(lora, tmp_path / "kit")  # base from adapter_config.json
    assert result.source_layout == f"original LLaVA-NeXT / OneVision (anyres) LoRA output merged into {base}"
    assert result.template.name == "vicuna_v1"
    model = LlavaKitForCausalLM.from_pretrained(tmp_path / "kit").eval()
    processor = LlavaKitProcessor.from_pretrained(tmp_path / "kit")  # the base's tokenizer
    batch = _next_batch(processor, [_image((60, 110), 6), _image((100, 30), 7), _image((40, 70), 8)])
    expected = _logits(
        hf_next,
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        image_sizes=batch["image_sizes"],
    )
    torch.testing.assert_close(_logits(model, **batch), expected, atol=ATOL, rtol=0)


def test_lora_base_given_with_base_overrides_a_hub_name(lora_folders, tmp_path):
    lora, base = lora_folders
    hub_named = _with_adapter_base(lora, tmp_path / "lora", HUB_BASE)
    with pytest.raises(CheckpointError, match=rf"base language model '{HUB_BASE}' .*no --base was given"):
        import_checkpoint(hub_named, tmp_path / "kit")
    with pytest.raises(CheckpointError, match=rf"--base {tmp_path / 'nowhere'} is not a local folder .*'{HUB_BASE}'"):
        import_checkpoint(hub_named, tmp_path / "kit", base=tmp_path / "nowhere")
    result = import_checkpoint(hub_named, tmp_path / "kit", base=base)
    assert result.source_layout.endswith(f"merged into {base}")


def test_lora_output_without_non_lora_trainables_is_refused(lora_folders, tmp_path):
    lora, _ = lora_folders
    copy = _with_adapter_base(lora, tmp_path / "lora", HUB_BASE)
    (copy / "non_lora_trainables.bin").unlink()
    with pytest.raises(CheckpointError, match="without non_lora_trainables.bin"):
        import_checkpoint(copy, tmp_path / "kit")


def test_lora_weights_for_modules_the_language_model_lacks_are_refused(lora_folders, tmp_path):
    lora, base = lora_folders
    copy = _with_adapter_base(lora, tmp_path / "lora", str(base))
    weights = load_file(copy / "adapter_model.safetensors")
    stray = "base_model.model.model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"
    weights[stray + ".lora_A.weight"] = torch.zeros(4, 32)
    save_file(weights, copy / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the language model.*vision_tower"):
        import_checkpoint(copy, tmp_path / "kit")


def test_base_for_a_whole_model_is_refused(next_folder, lora_folders, tmp_path):
    with pytest.raises(CheckpointError, match="--base .* is for LoRA output folders"):
        import_checkpoint(next_folder, tmp_path / "kit", base=lora_folders[1])


# ---------------------------------------------------------------- template choice


def _tokenizer(eos: str = "</s>", chat_template: str | None = None):
    return SimpleNamespace(eos_token=eos, chat_template=chat_template)


@pytest.mark.parametrize(
    "text_model_type, tokenizer, name, said",
    [
        ("qwen2", _tokenizer("<|endoftext|>"), "qwen_1_5", "Qwen2 language model"),
        ("mistral", _tokenizer(), "mistral_instruct", "Mistral language model"),
        ("mixtral", _tokenizer(), "mistral_instruct", "Mistral language model"),
        ("gemma", _tokenizer("<eos>"), "gemma_instruct", "Gemma"),
        ("llama", _tokenizer("<|eot_id|>"), "llama3", "<|eot_id|>"),
        ("llama", _tokenizer("<|im_end|>"), "chatml_direct", "ChatML tokenizer"),
        ("llama", _tokenizer("<|endoftext|>", "{{ '<|im_start|>' + role }}"), "chatml_direct", "ChatML tokenizer"),
        ("llama", _tokenizer("</s>", "{{ '[INST] <<SYS>>' }}"), "llava_llama_2", "Llama-2-chat"),
        ("llama", _tokenizer(), "vicuna_v1", "Vicuna v1"),
    ],
)
def test_original_template_choice(text_model_type, tokenizer, name, said):
    choice = default_template(text_model_type, tokenizer, original=True)
    assert choice.name == name and said in choice.reason and not choice.given


def test_transformers_folders_keep_their_templates():
    assert default_template("qwen2", _tokenizer("<|endoftext|>")).name == "chatml"
    assert default_template("llama", _tokenizer("<|im_end|>")).name == "vicuna_v1"
    assert default_template("llama", _tokenizer("<|eot_id|>")).name == "llama3"


def test_a_given_template_is_kept(next_folder, tmp_path):
    result = import_checkpoint(next_folder, tmp_path / "kit", template="llava_v1")
    assert result.template.given and result.template_line() == "template: llava_v1 (as given)"
    assert LlavaKitProcessor.from_pretrained(tmp_path / "kit").template_name == "llava_v1"


# ---------------------------------------------------------------- layouts llavakit cannot hold


def _config_only(folder: Path, **fields) -> Path:
    """An original config.json (tiny Llama LM, CLIP tower named) with `fields` on top; no weights."""
    config = tiny_text_config("llama").to_dict()
    config.update(
        architectures=["LlavaLlamaForCausalLM"],
        mm_vision_tower="openai/clip-vit-large-patch14-336",
        mm_projector_type="mlp2x_gelu",
        image_aspect_ratio="anyres",
        image_grid_pinpoints=[[336, 672]],
        mm_patch_merge_type="spatial_unpad",
    )
    config.update(fields)
    return _write_folder(folder, config, None)


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"image_aspect_ratio": "highres"}, "image_aspect_ratio 'highres'"),
        ({"image_aspect_ratio": "crop_split"}, "image_aspect_ratio 'crop_split'"),
        ({"image_aspect_ratio": "anyres_max_0"}, "image_aspect_ratio 'anyres_max_0'"),
        ({"mm_patch_merge_type": "flat"}, "mm_patch_merge_type 'flat' with image_aspect_ratio 'anyres'"),
        ({"mm_patch_merge_type": "spatial"}, "mm_patch_merge_type 'spatial' with image_aspect_ratio 'anyres'"),
        ({"mm_patch_merge_type": "spatial_unpad_nobase"}, "mm_patch_merge_type 'spatial_unpad_nobase'"),
        ({"mm_patch_merge_type": "spatial_unpad_maxpool2x2"}, "mm_patch_merge_type 'spatial_unpad_maxpool2x2'"),
        ({"mm_patch_merge_type": "pyramid"}, "mm_patch_merge_type 'pyramid'"),
        ({"image_grid_pinpoints": None}, "image_grid_pinpoints None"),
        ({"image_grid_pinpoints": "[[336, 672"}, "image_grid_pinpoints"),
        ({"add_faster_video": True}, "add_faster_video True"),
        ({"mm_resampler_type": "spatial_pool"}, "mm_resampler_type 'spatial_pool'"),
        ({"mm_spatial_pool_mode": "bicubic"}, "mm_spatial_pool_mode 'bicubic'"),
        ({"mm_newline_position": "row"}, "mm_newline_position 'row'"),
        (
            {"image_aspect_ratio": "pad", "mm_patch_merge_type": "spatial", "mm_newline_position": "grid"},
            "mm_newline_position 'grid' needs the image_newline vector",
        ),
        ({"mm_vision_select_feature": "slicefour_patch"}, "mm_vision_select_feature 'slicefour_patch'"),
    ],
)
def test_unsupported_layouts_name_the_field(tmp_path, fields, field):
    folder = _config_only(tmp_path / "llava", **fields)
    with pytest.raises(CheckpointError, match=rf"config\.json: {re.escape(field)}"):
        read_original_llava_config(folder)


def test_pinpoints_that_are_not_whole_crops_name_the_field(tmp_path):
    folder = _config_only(tmp_path / "llava", image_grid_pinpoints=[[40, 64]])
    layout = read_original_llava_config(folder).layout
    with pytest.raises(CheckpointError, match=r"image_grid_pinpoints \[\[40, 64\]\] holds \[40, 64\]"):
        layout.config_fields(crop_size=CROP)


def test_cls_features_in_a_grid_layout_name_the_field(next_folder, tmp_path):
    folder = tmp_path / "llava"
    shutil.copytree(next_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_vision_select_feature": "cls_patch"}))
    with pytest.raises(CheckpointError, match="mm_vision_select_feature 'cls_patch' keeps the CLS feature"):
        import_original_llava(folder, image_token_id=5)
