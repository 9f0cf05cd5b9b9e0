"""LlavaKitForCausalLM on tiny random models: splicing, loss masking, generation, save/load, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

from conftest import force_next_token
from llavakit import LlavaKitConfig, LlavaKitForCausalLM
from llavakit.model.connectors import CONNECTORS, build_connector, register_connector
from llavakit.tiny import tiny_llava_config

IMAGE_TOKEN = 600


def make_model(**kwargs) -> LlavaKitForCausalLM:
    torch.manual_seed(0)
    return LlavaKitForCausalLM(tiny_llava_config(image_token_id=IMAGE_TOKEN, **kwargs)).eval()


def prompt_with_images(config: LlavaKitConfig, num_images: int, text_len: int = 5) -> torch.Tensor:
    """Text tokens with `num_images` expanded placeholders spread through it."""
    generator = torch.Generator().manual_seed(1)
    pieces = [torch.randint(3, 500, (text_len,), generator=generator)]
    for _ in range(num_images):
        pieces.append(torch.full((config.num_image_tokens,), IMAGE_TOKEN))
        pieces.append(torch.randint(3, 500, (text_len,), generator=generator))
    return torch.cat(pieces)


def pixels(n: int, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("vision,text", [("clip", "llama"), ("siglip", "qwen2")])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_features_land_exactly_at_image_tokens(vision, text, strategy):
    model = make_model(vision=vision, text=text, vision_feature_select_strategy=strategy)
    input_ids = prompt_with_images(model.config, num_images=2)[None]
    features = model.get_image_features(pixels(2))
    assert features.shape == (2, model.config.num_image_tokens, model.config.text_config.hidden_size)
    embeds = model.merge_image_features(input_ids, model.get_input_embeddings()(input_ids), features)
    mask = input_ids[0] == IMAGE_TOKEN
    torch.testing.assert_close(embeds[0, mask], features.reshape(-1, features.shape[-1]))
    torch.testing.assert_close(embeds[0, ~mask], model.get_input_embeddings()(input_ids)[0, ~mask])


def test_forward_equals_language_model_on_spliced_embeddings():
    model = make_model()
    input_ids = prompt_with_images(model.config, num_images=1)[None]
    logits = model(input_ids=input_ids, pixel_values=pixels(1)).logits
    embeds = model.merge_image_features(
        input_ids, model.get_input_embeddings()(input_ids), model.get_image_features(pixels(1))
    )
    reference = model.language_model(inputs_embeds=embeds).logits
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


def test_feature_layer_list_concatenates_layers():
    model = make_model(vision_feature_layer=[-2, -1])
    assert model.vision_tower.hidden_size == 2 * model.config.vision_config.hidden_size
    outputs = model.vision_tower.encoder(pixels(1), output_hidden_states=True)
    expected = torch.cat([outputs.hidden_states[-2][:, 1:], outputs.hidden_states[-1][:, 1:]], dim=-1)
    torch.testing.assert_close(model.vision_tower(pixels(1)), expected)


def test_loss_counts_only_labelled_positions():
    model = make_model()
    input_ids = prompt_with_images(model.config, num_images=1)[None]
    labels = torch.full_like(input_ids, -100)
    labels[0, -4:] = input_ids[0, -4:]
    output = model(input_ids=input_ids, pixel_values=pixels(1), labels=labels)
    log_probs = torch.log_softmax(output.logits[0, :-1], dim=-1)
    targets = labels[0, 1:]
    keep = targets != -100
    expected = -log_probs[keep].gather(1, targets[keep, None]).mean()
    torch.testing.assert_close(output.loss, expected, atol=1e-5, rtol=1e-5)


def test_text_only_and_image_samples_mix_in_one_batch():
    model = make_model()
    with_image = prompt_with_images(model.config, num_images=1)
    text_only = torch.randint(3, 500, (with_image.numel(),), generator=torch.Generator().manual_seed(5))
    batch = torch.stack([with_image, text_only])
    logits = model(input_ids=batch, pixel_values=pixels(1)).logits
    alone_text = model(input_ids=text_only[None]).logits
    alone_image = model(input_ids=with_image[None], pixel_values=pixels(1)).logits
    torch.testing.assert_close(logits[1], alone_text[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[0], alone_image[0], atol=1e-5, rtol=1e-5)


def test_greedy_generate_equals_stepwise_argmax():
    model = make_model()
    input_ids = prompt_with_images(model.config, num_images=1)[None]
    generated = model.generate(
        input_ids=input_ids,
        pixel_values=pixels(1),
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    sequence = input_ids
    for _ in range(8):
        next_token = model(input_ids=sequence, pixel_values=pixels(1)).logits[0, -1].argmax()
        sequence = torch.cat([sequence, next_token.view(1, 1)], dim=1)
    assert torch.equal(generated, sequence)


def test_sampling_generate_is_seeded_and_uses_the_cache():
    model = make_model()
    input_ids = prompt_with_images(model.config, num_images=1)[None]
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(
            model.generate(
                input_ids=input_ids,
                pixel_values=pixels(1),
                max_new_tokens=6,
                do_sample=True,
                top_k=50,
                eos_token_id=None,
                pad_token_id=0,
            )
        )
    assert torch.equal(runs[0], runs[1])
    no_cache = model.generate(
        input_ids=input_ids,
        pixel_values=pixels(1),
        max_new_tokens=6,
        do_sample=False,
        use_cache=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    with_cache = model.generate(
        input_ids=input_ids,
        pixel_values=pixels(1),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert torch.equal(no_cache, with_cache)


def test_save_and_load_round_trip(tmp_path):
    model = make_model(connector="mlp3x_gelu", vision_feature_layer=[-3, -1])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = LlavaKitForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.connector == "mlp3x_gelu" and loaded.config.vision_feature_layer == [-3, -1]
    input_ids = prompt_with_images(model.config, num_images=1)[None]
    torch.testing.assert_close(
        loaded(input_ids=input_ids, pixel_values=pixels(1)).logits,
        model(input_ids=input_ids, pixel_values=pixels(1)).logits,
    )


def test_token_count_mismatch_is_a_clear_error():
    model = make_model()
    input_ids = prompt_with_images(model.config, num_images=2)[None]
    with pytest.raises(ValueError, match="image tokens"):
        model(input_ids=input_ids, pixel_values=pixels(1))
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=input_ids)


def test_connector_registry():
    assert build_connector("linear", 8, 16).layers[0].weight.shape == (16, 8)
    assert len(build_connector("mlp4x_gelu", 8, 16).layers) == 4
    with pytest.raises(ValueError, match="unknown connector 'mlp_relu'"):
        build_connector("mlp_relu", 8, 16)
    name = "test_identity_pad"
    try:
        register_connector(name)(lambda v, t: torch.nn.Linear(v, t, bias=False))
        assert build_connector(name, 8, 16).bias is None
        with pytest.raises(ValueError, match="already registered"):
            register_connector(name)(lambda v, t: None)
    finally:
        CONNECTORS.pop(name, None)


def test_config_rejects_unknown_strategy():
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        tiny_llava_config(image_token_id=IMAGE_TOKEN, vision_feature_select_strategy="cls")


def test_build_model_loads_pretrained_parts_from_folders(tmp_path):
    from transformers import CLIPConfig, CLIPModel, LlamaForCausalLM

    from llavakit.model.build import ModelSpec, build_model
    from llavakit.tiny import tiny_text_config, tiny_vision_config

    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(
            vision_config=tiny_vision_config("clip").to_dict(),
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
            projection_dim=32,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    llm = LlamaForCausalLM(tiny_text_config("llama", vocab_size=600))
    llm.save_pretrained(tmp_path / "llm")
    model = build_model(
        ModelSpec(vision=str(tmp_path / "clip"), language=str(tmp_path / "llm"), image_token_id=IMAGE_TOKEN)
    )
    assert model.config.text_config.vocab_size == IMAGE_TOKEN + 1
    torch.testing.assert_close(
        model.vision_tower.encoder.embeddings.patch_embedding.weight,
        clip.vision_model.embeddings.patch_embedding.weight,
    )
    torch.testing.assert_close(model.language_model.model.norm.weight, llm.model.norm.weight)
    torch.testing.assert_close(model.get_input_embeddings().weight[:600], llm.get_input_embeddings().weight)


def test_build_model_from_config_dicts():
    from llavakit.model.build import ModelSpec, build_model

    model = build_model(
        ModelSpec(
            vision=dict(
                model_type="siglip_vision_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            language=dict(
                model_type="qwen2",
                vocab_size=300,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            ),
            image_token_id=299,
            connector="linear",
        )
    )
    assert model.config.num_image_tokens == 15  # 16 SigLIP patches; `default` drops the first as transformers does
    assert model.get_image_features(pixels(1)).shape == (1, 15, 64)
    with pytest.raises(ValueError, match="model_type"):
        build_model(ModelSpec(vision=dict(hidden_size=4), language=dict(model_type="qwen2"), image_token_id=1))


# ---- placeholders in generated text ------------------------------------------------------------------


def forced_image_token_model() -> tuple[LlavaKitForCausalLM, dict[str, torch.Tensor]]:
    """A model whose greedy first answer token is `<image>`, and the prompt it says it after."""
    model = make_model()
    inputs = {"input_ids": prompt_with_images(model.config, num_images=1)[None], "pixel_values": pixels(1)}
    force_next_token(model, IMAGE_TOKEN, **inputs)
    return model, inputs


def greedy(model, inputs, **kwargs) -> torch.Tensor:
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs)
    return output[0, inputs["input_ids"].shape[1] :]


def test_a_generated_image_token_is_embedded_as_text_after_prefill():
    model, inputs = forced_image_token_model()
    new = greedy(model, inputs, suppress_tokens=[])
    assert int(new[0]) == IMAGE_TOKEN
    # The same steps by hand: prefill with the image, then each token alone with the cache, no pixels.
    step = model(**inputs, use_cache=True)
    tokens = [int(step.logits[0, -1].argmax())]
    for _ in range(5):
        step = model(input_ids=torch.tensor([[tokens[-1]]]), cache=step.cache, use_cache=True)
        tokens.append(int(step.logits[0, -1].argmax()))
    assert new.tolist() == tokens


def test_placeholders_are_suppressed_by_default():
    model, inputs = forced_image_token_model()
    assert model.generation_config.suppress_tokens == [IMAGE_TOKEN]
    assert IMAGE_TOKEN not in greedy(model, inputs).tolist()
    with_video = make_model(video_token_id=601)
    assert with_video.generation_config.suppress_tokens == [IMAGE_TOKEN, 601]


def test_suppression_is_saved_restored_for_older_checkpoints_and_can_be_turned_off(tmp_path):
    make_model().save_pretrained(tmp_path)
    assert LlavaKitForCausalLM.from_pretrained(tmp_path).generation_config.suppress_tokens == [IMAGE_TOKEN]
    saved = tmp_path / "generation_config.json"
    older = {k: v for k, v in json.loads(saved.read_text()).items() if k != "suppress_tokens"}
    saved.write_text(json.dumps(older))  # written before the default existed
    assert LlavaKitForCausalLM.from_pretrained(tmp_path).generation_config.suppress_tokens == [IMAGE_TOKEN]
    saved.write_text(json.dumps({**older, "suppress_tokens": []}))  # turned off on purpose
    assert LlavaKitForCausalLM.from_pretrained(tmp_path).generation_config.suppress_tokens == []


def test_only_the_prefill_step_requires_pixel_values():
    model = make_model()
    input_ids = prompt_with_images(model.config, num_images=1)[None]
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=input_ids, cache=DynamicCache(config=model.config.text_config))
    cache = model(input_ids=input_ids, pixel_values=pixels(1), use_cache=True).cache
    later = model(input_ids=torch.tensor([[IMAGE_TOKEN]]), cache=cache, use_cache=True)
    assert torch.isfinite(later.logits).all()


@pytest.mark.parametrize("attention", [None, "eager"])
def test_composed_model_is_causal(attention):
    """A later token never changes earlier logits: the composed decoder keeps its attention implementation."""
    from llavakit.model.build import ModelSpec, build_model
    from llavakit.tiny import tiny_text_config, tiny_vision_config

    torch.manual_seed(0)
    spec = ModelSpec(
        vision=tiny_vision_config().to_dict(),
        language=tiny_text_config().to_dict(),
        image_token_id=5,
        attn_implementation=attention,
    )
    model = build_model(spec).eval()
    assert model.config.text_config._attn_implementation == (attention or "sdpa")
    ids = torch.randint(10, 600, (1, 12), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, -1] = 7
    with torch.no_grad():
        before, after = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(before[0, :-1], after[0, :-1], rtol=0, atol=1e-6)
