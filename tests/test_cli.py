"""The `llavakit` command end to end: import a transformers Llava folder, export it back, chat."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from conftest import original_llava_checkpoint
from llavakit import LlavaKitForCausalLM
from llavakit.cli import main
from llavakit.interop.transformers_llava import transformers_config_from_llavakit
from llavakit.processing.images import CLIP_MEAN, CLIP_STD
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve.chat import ChatSession, bundled_image_path, tiny_random_chat_model
from llavakit.tiny import tiny_llava_config

PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"


def photo(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def transformers_folder(tmp_path_factory, tiny_tokenizer):
    """A tiny transformers Llava checkpoint with its LlavaProcessor (LLaVA-1.5 style: pad to square)."""
    folder = tmp_path_factory.mktemp("hf_llava")
    config = transformers_config_from_llavakit(
        tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return folder


def test_import_gives_transformers_inputs_and_logits(tmp_path, transformers_folder):
    assert main(["import", str(transformers_folder), str(tmp_path / "kit")]) == 0
    theirs_model = LlavaForConditionalGeneration.from_pretrained(transformers_folder).eval()
    theirs_processor = AutoProcessor.from_pretrained(transformers_folder)
    ours_model = LlavaKitForCausalLM.from_pretrained(tmp_path / "kit").eval()
    ours_processor = LlavaKitProcessor.from_pretrained(tmp_path / "kit")
    assert ours_processor.image_config.mode == "pad"

    theirs_inputs = theirs_processor(text=PROMPT, images=[photo()], return_tensors="pt")
    ours_inputs = ours_processor(text=PROMPT, images=[photo()], return_tensors="pt")
    assert torch.equal(ours_inputs["input_ids"], theirs_inputs["input_ids"])
    torch.testing.assert_close(ours_inputs["pixel_values"], theirs_inputs["pixel_values"], atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            ours_model(**ours_inputs).logits, theirs_model(**theirs_inputs).logits, atol=1e-4, rtol=0
        )


def test_export_loads_in_transformers_and_matches(tmp_path, transformers_folder):
    main(["import", str(transformers_folder), str(tmp_path / "kit")])
    assert main(["export", str(tmp_path / "kit"), str(tmp_path / "hf")]) == 0
    exported = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    ours_model = LlavaKitForCausalLM.from_pretrained(tmp_path / "kit").eval()
    ours_processor = LlavaKitProcessor.from_pretrained(tmp_path / "kit")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == ours_processor.apply_chat_template(conversation, add_generation_prompt=True)
    theirs_inputs = processor(text=prompt, images=[photo(1)], return_tensors="pt")
    ours_inputs = ours_processor(text=prompt, images=[photo(1)], return_tensors="pt")
    assert torch.equal(ours_inputs["input_ids"], theirs_inputs["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(
            ours_model(**ours_inputs).logits, exported(**theirs_inputs).logits, atol=1e-4, rtol=0
        )


def test_export_of_linear_connector_names_it(tmp_path, tiny_tokenizer, capsys):
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"), connector="linear")
    LlavaKitForCausalLM(config).save_pretrained(tmp_path / "kit")
    LlavaKitProcessor.from_model_config(tiny_tokenizer, config, template="vicuna_v1").save_pretrained(tmp_path / "kit")
    assert main(["export", str(tmp_path / "kit"), str(tmp_path / "hf")]) == 2
    assert "linear" in capsys.readouterr().err


def test_import_of_unknown_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "bert" in capsys.readouterr().err


def test_chat_command_prints_the_sessions_answer(capsys):
    assert main(["chat", "-q", "What shapes are in the image?", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out.splitlines()
    model, processor = tiny_random_chat_model()
    expected = ChatSession(model.eval(), processor, bundled_image_path(), max_new_tokens=6).ask(
        "What shapes are in the image?"
    )
    assert printed == ["USER: What shapes are in the image?", f"ASSISTANT: {expected}"]


def test_chat_answer_is_greedy_continuation_of_the_prompt():
    model, processor = tiny_random_chat_model()
    model.eval()
    session = ChatSession(model, processor, bundled_image_path(), max_new_tokens=5)
    answer = session.ask("Describe the image.")
    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nDescribe the image."}])
    inputs = processor(text=prompt, images=[Image.open(bundled_image_path())], return_tensors="pt")
    ids = inputs["input_ids"]
    for _ in range(5):
        with torch.no_grad():
            next_id = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, -1].argmax()
        if int(next_id) in processor.stop_token_ids:
            break
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    expected = processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert answer == expected
    assert session.turns[-1] == {"role": "assistant", "content": answer}
    with pytest.raises(ValueError, match="empty"):
        session.ask("  ")


def test_import_original_llava_folder_with_its_tokenizer(tmp_path, tiny_tokenizer):
    from llavakit.interop.original_llava import import_original_llava

    folder, *_ = original_llava_checkpoint(tmp_path, "clip", "llama", "mlp2x_gelu", vision_inside=False)
    tiny_tokenizer.save_pretrained(folder)
    assert main(["import", str(folder), str(tmp_path / "kit")]) == 0
    processor = LlavaKitProcessor.from_pretrained(tmp_path / "kit")
    assert (processor.image_config.mode, processor.template.name) == ("pad", "vicuna_v1")
    imported = LlavaKitForCausalLM.from_pretrained(tmp_path / "kit").eval()
    reference = import_original_llava(folder, image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>")).eval()
    inputs = processor(text=PROMPT, images=[photo(2)], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(imported(**inputs).logits, reference(**inputs).logits)


def test_data_synth_then_check_finds_exactly_the_broken_sample(tmp_path, capsys, tiny_tokenizer):
    import json

    assert main(["data", "synth", str(tmp_path / "world"), "--n", "20", "--seed", "3"]) == 0
    instruct = tmp_path / "world" / "instruct.json"
    assert main(["data", "check", str(instruct)]) == 0
    records = json.loads(instruct.read_text())
    records[1]["image"] = "images/missing.png"
    instruct.write_text(json.dumps(records))
    capsys.readouterr()
    assert main(["data", "check", str(instruct)]) == 1
    report = capsys.readouterr().out
    assert records[1]["id"] in report and "missing image" in report
    assert records[0]["id"] not in report
