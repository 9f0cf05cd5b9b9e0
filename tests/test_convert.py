"""Conversion between llavakit, transformers' Llava and original LLaVA checkpoints: same logits after every move.

Run: .venv/bin/python -m pytest tests/test_convert.py -q
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from conftest import force_next_token
from conftest import original_llava_checkpoint as _original_checkpoint
from conftest import randomized as _randomize
from llavakit.interop.keys import KeyTable, rename
from llavakit.interop.original_llava import (
    import_original_llava,
    is_original_llava_checkpoint,
    llavakit_state_dict_from_original,
    read_original_llava_config,
)
from llavakit.interop.transformers_llava import (
    LLAVA_KEYS,
    export_to_transformers,
    import_transformers_llava,
    llavakit_config_from_transformers,
    llavakit_state_dict_from_transformers,
    transformers_config_from_llavakit,
    transformers_state_dict_from_llavakit,
)
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.tiny import tiny_llava_config, tiny_text_config, tiny_vision_config

IMAGE_TOKEN = 600
VOCAB = 640
TOL = 1e-4


def _expected_image_tokens(vision: str, strategy: str, image_size: int = 32, patch_size: int = 8) -> int:
    """Features per image, by hand: CLIP prepends a CLS; `default` drops the first feature."""
    patches = (image_size // patch_size) ** 2
    tokens = patches + (1 if vision == "clip" else 0)
    return tokens - 1 if strategy == "default" else tokens


def _inputs(num_image_tokens: int, image_token_id: int, seed: int = 0):
    """Two rows with text around one image each, plus their pixel values."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for prefix, suffix in ((3, 5), (6, 2)):
        text = torch.randint(0, IMAGE_TOKEN, (prefix + suffix,), generator=generator)
        rows.append(torch.cat([text[:prefix], torch.full((num_image_tokens,), image_token_id), text[prefix:]]))
    pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
    return torch.stack(rows), pixel_values


def _transformers_llava(vision: str, text: str, strategy: str, layer, tie: bool) -> LlavaForConditionalGeneration:
    config = LlavaConfig(
        vision_config=tiny_vision_config(vision),
        text_config=tiny_text_config(text, vocab_size=VOCAB, tie_word_embeddings=tie),
        image_token_index=IMAGE_TOKEN,
        image_seq_length=_expected_image_tokens(vision, strategy),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layer,
        tie_word_embeddings=tie,
    )
    return _randomize(LlavaForConditionalGeneration(config), seed=1)


CASES = [
    ("clip", "llama", "default", -2, False),
    ("clip", "llama", "full", [-3, -1], False),
    ("siglip", "qwen2", "default", [-2, -1], True),
    ("siglip", "qwen2", "full", -1, True),
]


@pytest.mark.parametrize("vision,text,strategy,layer,tie", CASES)
def test_import_transformers_llava_matches_logits(tmp_path, vision, text, strategy, layer, tie):
    reference = _transformers_llava(vision, text, strategy, layer, tie)
    reference.save_pretrained(tmp_path)
    model = import_transformers_llava(tmp_path)

    num_tokens = _expected_image_tokens(vision, strategy)
    assert model.config.num_image_tokens == num_tokens
    assert model.config.vision_feature_layer == layer
    assert model.config.tie_word_embeddings == tie
    assert not model.training
    input_ids, pixel_values = _inputs(num_tokens, IMAGE_TOKEN)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, pixel_values=pixel_values).logits
        actual = model(input_ids=input_ids, pixel_values=pixel_values).logits
        other_image = model(input_ids=input_ids, pixel_values=pixel_values.flip(-1)).logits
    torch.testing.assert_close(actual, expected, atol=TOL, rtol=0)
    # The image path is live: other pixels change the logits far beyond the tolerance.
    assert (other_image - actual).abs().max() > 100 * TOL


def test_import_in_memory_model_shares_tensors():
    reference = _transformers_llava("clip", "llama", "default", -2, tie=False)
    model = import_transformers_llava(reference)
    assert model.multi_modal_projector.layers[1].weight.data_ptr() == (
        reference.model.multi_modal_projector.linear_2.weight.data_ptr()
    )
    halved = import_transformers_llava(reference, dtype=torch.bfloat16)
    assert halved.dtype == torch.bfloat16
    assert reference.dtype == torch.float32  # the source model is left as it was


@pytest.mark.parametrize(
    "vision,text,strategy,layer,tie",
    [("clip", "llama", "default", -2, False), ("siglip", "qwen2", "full", [-3, -1], True)],
)
def test_export_roundtrip_through_save_pretrained(tmp_path, vision, text, strategy, layer, tie):
    config = tiny_llava_config(
        IMAGE_TOKEN,
        vocab_size=VOCAB,
        vision=vision,
        text=text,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layer,
        tie_word_embeddings=tie,
    )
    config.text_config.tie_word_embeddings = tie
    model = _randomize(LlavaKitForCausalLM(config), seed=2)
    if tie:
        model.tie_weights()

    exported = export_to_transformers(model)
    assert not exported.training and exported.dtype == model.dtype
    assert exported.config.image_seq_length == _expected_image_tokens(vision, strategy)
    exported.save_pretrained(tmp_path)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()

    input_ids, pixel_values = _inputs(model.config.num_image_tokens, IMAGE_TOKEN, seed=3)
    with torch.no_grad():
        expected = model(input_ids=input_ids, pixel_values=pixel_values).logits
        actual = reloaded(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(actual, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("connector,word", [("linear", "linear"), ("mlp3x_gelu", "3 linear layers")])
def test_export_rejects_connectors_transformers_cannot_hold(connector, word):
    model = LlavaKitForCausalLM(tiny_llava_config(IMAGE_TOKEN, vocab_size=VOCAB, connector=connector))
    with pytest.raises(ValueError, match=word):
        export_to_transformers(model)
    with pytest.raises(ValueError, match=connector):
        transformers_config_from_llavakit(model.config)


def test_config_roundtrip_keeps_llava_fields():
    config = tiny_llava_config(
        IMAGE_TOKEN, vocab_size=VOCAB, vision_feature_layer=[-3, -1], vision_feature_select_strategy="full"
    )
    exported = transformers_config_from_llavakit(config)
    assert exported.image_token_id == IMAGE_TOKEN and exported.image_token_index == IMAGE_TOKEN
    assert exported.image_seq_length == 17  # 16 patches + CLS
    assert exported.vision_feature_layer == [-3, -1]
    back = llavakit_config_from_transformers(exported)
    assert (back.connector, back.vision_feature_layer, back.vision_feature_select_strategy, back.image_token_id) == (
        "mlp2x_gelu",
        [-3, -1],
        "full",
        IMAGE_TOKEN,
    )
    assert back.text_config.hidden_size == config.text_config.hidden_size


@pytest.mark.parametrize("field,value", [("projector_hidden_act", "relu"), ("multimodal_projector_bias", False)])
def test_transformers_projectors_without_a_connector_are_rejected(field, value):
    config = LlavaConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config(), **{field: value})
    with pytest.raises(ValueError, match=field):
        llavakit_config_from_transformers(config)


def test_state_dict_maps_are_inverse_and_strict():
    reference = _transformers_llava("clip", "llama", "default", -2, tie=False)
    state_dict = reference.state_dict()
    llavakit_keys = llavakit_state_dict_from_transformers(state_dict)
    llavakit_model = LlavaKitForCausalLM(llavakit_config_from_transformers(reference.config))
    assert set(llavakit_keys) == set(llavakit_model.state_dict())
    assert set(transformers_state_dict_from_llavakit(llavakit_keys)) == set(state_dict)
    with pytest.raises(ValueError, match="model.image_newline"):
        llavakit_state_dict_from_transformers({**state_dict, "model.image_newline": torch.zeros(4)})
    with pytest.raises(ValueError, match="multi_modal_projector.layers.2.weight"):
        transformers_state_dict_from_llavakit({"multi_modal_projector.layers.2.weight": torch.zeros(1)})


def test_one_key_table_gives_both_directions():
    """Every llavakit name maps to the transformers name and back, from the same (llavakit, transformers) pair."""
    pairs = {
        "vision_tower.encoder.vision_model.embeddings.patch_embedding.weight": (
            "model.vision_tower.vision_model.embeddings.patch_embedding.weight"
        ),
        "multi_modal_projector.layers.0.weight": "model.multi_modal_projector.linear_1.weight",
        "multi_modal_projector.layers.1.bias": "model.multi_modal_projector.linear_2.bias",
        "language_model.model.layers.0.mlp.up_proj.weight": "model.language_model.layers.0.mlp.up_proj.weight",
        "language_model.lm_head.weight": "lm_head.weight",
    }
    tensors = {name: torch.zeros(1) for name in pairs}
    exported = rename(tensors, LLAVA_KEYS.from_llavakit(), "llavakit")
    assert sorted(exported) == sorted(pairs.values())
    assert set(rename(exported, LLAVA_KEYS.to_llavakit(), "transformers")) == set(pairs)
    # `{param}` is weight or bias only: anything else under a projector linear is unknown, not renamed.
    with pytest.raises(ValueError, match="linear_1.scale"):
        rename({"model.multi_modal_projector.linear_1.scale": torch.zeros(1)}, LLAVA_KEYS.to_llavakit(), "x")
    with pytest.raises(ValueError, match="same placeholders"):
        KeyTable((("a.{rest}", "b"),))
    with pytest.raises(ValueError, match="unknown placeholder"):
        KeyTable((("a.{layer}", "b.{layer}"),))


# ---------------------------------------------------------------- original LLaVA layout


def _original_reference(vision_model, llm, projector_weights, drop_cls: bool, prefix_ids, suffix_ids, pixel_values):
    """Original LLaVA's forward, by hand: layer -2 features, projector, spliced at the placeholder."""
    with torch.no_grad():
        features = vision_model(pixel_values, output_hidden_states=True).hidden_states[-2]
        if drop_cls:
            features = features[:, 1:]
        for index, (weight, bias) in enumerate(projector_weights):
            if index > 0:
                features = F.gelu(features)
            features = F.linear(features, weight, bias)
        embed = llm.get_input_embeddings()
        inputs_embeds = torch.cat([embed(prefix_ids)[None], features, embed(suffix_ids)[None]], dim=1)
        return llm(inputs_embeds=inputs_embeds).logits, features.shape[1]


@pytest.mark.parametrize(
    "vision,text,projector,vision_inside,image_token_id",
    [
        ("clip", "llama", "mlp2x_gelu", False, 5),
        ("clip", "llama", "linear", True, VOCAB),  # <image> past the vocabulary: embeddings grow
        ("siglip", "qwen2", "mlp2x_gelu", False, VOCAB + 3),
    ],
)
def test_import_original_llava_matches_hand_reference(tmp_path, vision, text, projector, vision_inside, image_token_id):
    folder, vision_folder, vision_model, llm, projector_weights = _original_checkpoint(
        tmp_path, vision, text, projector, vision_inside
    )
    assert is_original_llava_checkpoint(folder)
    assert read_original_llava_config(folder).image_aspect_ratio == "pad"
    model = import_original_llava(
        folder, image_token_id=image_token_id, vision_tower_path=str(vision_folder) if vision_inside else None
    )

    prefix_ids, suffix_ids = torch.tensor([1, 17, 42, 99]), torch.tensor([7, 300, 2])
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    # LLaVA's SigLIP towers keep every feature (no CLS to drop); `patch` drops CLIP's CLS.
    expected, num_features = _original_reference(
        vision_model, llm, projector_weights, vision == "clip", prefix_ids, suffix_ids, pixel_values
    )
    assert model.config.num_image_tokens == num_features
    input_ids = torch.cat([prefix_ids, torch.full((num_features,), image_token_id), suffix_ids])[None]
    with torch.no_grad():
        actual = model(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(actual[..., :VOCAB], expected, atol=TOL, rtol=0)

    vocab = max(VOCAB, image_token_id + 1)
    assert model.config.text_config.vocab_size == vocab and actual.shape[-1] == vocab
    if vocab > VOCAB:  # new rows are the mean of the old ones
        old_mean = llm.get_input_embeddings().weight.mean(dim=0)
        torch.testing.assert_close(model.get_input_embeddings().weight[VOCAB:], old_mean.expand(vocab - VOCAB, -1))
        torch.testing.assert_close(
            model.get_output_embeddings().weight[-1], llm.get_output_embeddings().weight.mean(dim=0)
        )


def test_original_llava_unknown_keys_are_reported(tmp_path):
    folder, *_ = _original_checkpoint(
        tmp_path, "clip", "llama", "mlp2x_gelu", False, extra_keys={"image_newline": torch.zeros(64)}
    )
    with pytest.raises(ValueError, match="image_newline"):
        import_original_llava(folder, image_token_id=VOCAB)


def test_original_llava_detection_and_bad_projector(tmp_path):
    reference = _transformers_llava("clip", "llama", "default", -2, tie=False)
    reference.save_pretrained(tmp_path / "hf")
    assert not is_original_llava_checkpoint(tmp_path / "hf")
    folder, *_ = _original_checkpoint(tmp_path, "clip", "llama", "mlp2x_gelu", False)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "identity"}))
    with pytest.raises(ValueError, match="identity"):
        read_original_llava_config(folder)


def test_original_llava_im_start_end_is_refused(tmp_path):
    """A checkpoint trained with <im_start>/<im_end> around its image features would import silently wrong."""
    folder, *_ = _original_checkpoint(tmp_path, "clip", "llama", "mlp2x_gelu", False)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_use_im_start_end": True}))
    assert is_original_llava_checkpoint(folder)
    expected = re.escape(str(folder)) + r".*mm_use_im_start_end is true.*<im_start> and <im_end>.*does not support"
    with pytest.raises(ValueError, match=expected):
        read_original_llava_config(folder)
    with pytest.raises(ValueError, match=expected):
        import_original_llava(folder, image_token_id=VOCAB)
    (folder / "config.json").write_text(json.dumps({**config, "mm_use_im_start_end": False}))
    assert read_original_llava_config(folder).connector == "mlp2x_gelu"


def test_original_projector_keys():
    """`model.mm_projector.{2k}` is linear layer k (odd indices are activations); a bare one is the linear."""
    renamed = llavakit_state_dict_from_original(
        {
            "model.mm_projector.0.weight": torch.zeros(1),
            "model.mm_projector.2.bias": torch.zeros(1),
            "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(1),  # stale buffer: dropped
        }
    )
    assert sorted(renamed) == ["multi_modal_projector.layers.0.weight", "multi_modal_projector.layers.1.bias"]
    assert list(llavakit_state_dict_from_original({"model.mm_projector.weight": torch.zeros(1)})) == [
        "multi_modal_projector.layers.0.weight"
    ]


# ---- generation: a model that writes its own image token ---------------------------------------------


def _greedy_new_tokens(model, input_ids, pixel_values, **kwargs) -> torch.Tensor:
    output = model.generate(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        **kwargs,
    )
    return output[:, input_ids.shape[1] :]


def test_generated_image_token_gives_transformers_llava_tokens():
    """`<image>` is row 0's greedy first answer token: with suppression off, generation goes on as
    transformers' Llava does (the token embedded as text); by default neither model writes it."""
    model = _randomize(LlavaKitForCausalLM(tiny_llava_config(IMAGE_TOKEN, vocab_size=VOCAB)), seed=7)
    input_ids, pixel_values = _inputs(model.config.num_image_tokens, IMAGE_TOKEN, seed=8)
    force_next_token(model, IMAGE_TOKEN, input_ids=input_ids, pixel_values=pixel_values)
    exported = export_to_transformers(model)

    ours = _greedy_new_tokens(model, input_ids, pixel_values, suppress_tokens=[])
    theirs = _greedy_new_tokens(exported, input_ids, pixel_values, suppress_tokens=[])
    assert int(ours[0, 0]) == IMAGE_TOKEN
    assert torch.equal(ours, theirs)

    assert exported.generation_config.suppress_tokens == [IMAGE_TOKEN]
    ours = _greedy_new_tokens(model, input_ids, pixel_values)
    assert IMAGE_TOKEN not in ours.tolist()[0] + ours.tolist()[1]
    assert torch.equal(ours, _greedy_new_tokens(exported, input_ids, pixel_values))
