"""`llavakit chat` and `llavakit eval` load real models: dtype, device map, quantization, several
images, a video, or text only; each checked against a direct processor + model call.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_chat_options.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.quantizers.quantizers_utils import should_convert_module

from conftest import randomized
from llavakit.cli import main
from llavakit.eval.runner import evaluate_files
from llavakit.model.checkpoint import (
    UNQUANTIZED_MODULES,
    inference_dtype,
    load_checkpoint,
    quantization_config,
)
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.images import load_image
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.processing.video import FrameSampling
from llavakit.serve.chat import ChatSession, load_chat_model
from llavakit.tiny import tiny_llava_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = "What is in the pictures?"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


def _save_checkpoint(folder: Path, tokenizer, dtype: torch.dtype = torch.float32, **config_fields) -> Path:
    """A tiny llavakit checkpoint with weights far from zero (so images and dtypes show in the logits)."""
    config = tiny_llava_config(tokenizer.convert_tokens_to_ids("<image>"), **config_fields)
    model = randomized(LlavaKitForCausalLM(config), seed=3)
    model.to(dtype).save_pretrained(folder)
    sampling = FrameSampling(max_frames=4)
    LlavaKitProcessor.from_model_config(tokenizer, config, "vicuna_v1", video_sampling=sampling).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer) -> Path:
    """ckpt/ (no video token), ckpt_bf16/ (saved in bfloat16), video_ckpt/ (with one), two photos,
    a folder of six frames and a question file."""
    root = tmp_path_factory.mktemp("chat_options")
    _save_checkpoint(root / "ckpt", tiny_tokenizer)
    _save_checkpoint(root / "ckpt_bf16", tiny_tokenizer, dtype=torch.bfloat16)
    video_token_id = tiny_tokenizer.convert_tokens_to_ids("<video>")
    _save_checkpoint(root / "video_ckpt", tiny_tokenizer, video_token_id=video_token_id)
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (40, 56, 3)), ("b.png", (48, 32, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / name)
    (root / "frames").mkdir()
    for index in range(6):
        Image.new("RGB", (40, 30), (index * 40, 100, 255 - index * 40)).save(root / "frames" / f"{index:03d}.png")
    question = {"id": "q1", "image": "a.png", "question": "What colour is it?", "answer": "red"}
    (root / "eval_vqa.jsonl").write_text(json.dumps(question) + "\n")
    return root


def chat_answer(capsys, *argv: str) -> str:
    """Run `llavakit chat ... -q QUESTION` and return its answer."""
    assert main(["chat", *argv, "-q", QUESTION, "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"USER: {QUESTION}" and lines[1].startswith("ASSISTANT:")
    return lines[1].removeprefix("ASSISTANT:").strip()


def one_line_error(capsys, argv: list[str]) -> str:
    """Run a command that must fail as a user mistake: exit 2, one line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def logits(session: ChatSession, question: str = QUESTION) -> torch.Tensor:
    """The session's next-token logits for `question`, in float32."""
    with torch.no_grad():
        return session.model(**session.inputs(session.conversation(question))).logits.float()


# ---- dtype ----------------------------------------------------------------------------------


def test_bfloat16_chat_loads_in_bfloat16_and_stays_close_to_float32(files, capsys):
    answer = chat_answer(capsys, "--model", str(files / "ckpt"), "--image", str(files / "a.png"), "--dtype", "bfloat16")
    model, processor = load_chat_model(files / "ckpt", dtype="bfloat16")
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    session = ChatSession(model, processor, files / "a.png", max_new_tokens=4)
    assert session.inputs(session.conversation(QUESTION))["pixel_values"].dtype == torch.bfloat16
    assert session.ask(QUESTION) == answer

    reference, _ = load_chat_model(files / "ckpt")
    assert {parameter.dtype for parameter in reference.parameters()} == {torch.float32}  # the CPU default
    half, full = (
        logits(ChatSession(model, processor, files / "a.png")),
        logits(ChatSession(reference, processor, files / "a.png")),
    )
    scale = float(full.abs().max())
    torch.testing.assert_close(half, full, atol=0.05 * scale, rtol=0.05)
    assert not torch.equal(half, full)  # it did compute in bfloat16


def test_default_dtype_is_float32_on_cpu_and_the_checkpoints_own_elsewhere(files, caplog):
    assert inference_dtype(None, "cpu") == inference_dtype(None) == torch.float32
    assert inference_dtype(None, "cuda:0") == inference_dtype(None, None, None, "4bit") == "auto"
    assert inference_dtype("float16", "cuda") == torch.float16
    saved_bf16 = files / "ckpt_bf16"
    assert load_chat_model(saved_bf16)[0].dtype == torch.float32
    assert load_chat_model(saved_bf16, dtype="auto")[0].dtype == torch.bfloat16
    # The library's own default stays transformers' (the checkpoint's dtype): export keeps the weights as saved.
    assert load_checkpoint(saved_bf16, LlavaKitProcessor)[0].dtype == torch.bfloat16
    model, _ = load_chat_model(files / "ckpt", dtype="float16")
    assert model.dtype == torch.float16
    assert "float16 on the CPU" in caplog.text


# ---- device map -----------------------------------------------------------------------------


def test_device_map_auto_gives_the_plain_loads_logits_and_answer(files, capsys):
    mapped, processor = load_chat_model(files / "ckpt", device_map="auto")
    plain, _ = load_chat_model(files / "ckpt")
    torch.testing.assert_close(
        logits(ChatSession(mapped, processor, files / "a.png")), logits(ChatSession(plain, processor, files / "a.png"))
    )
    args = ("--model", str(files / "ckpt"), "--image", str(files / "a.png"))
    assert chat_answer(capsys, *args, "--device-map", "auto") == chat_answer(capsys, *args)


def test_device_map_and_device_together_are_refused(files, capsys):
    argv = ["chat", "--model", str(files / "ckpt"), "-q", "Hi?", "--device-map", "auto", "--device", "cpu"]
    err = one_line_error(capsys, argv)
    assert "--device-map" in err and "--device cpu" in err


# ---- quantization ---------------------------------------------------------------------------


@NO_CUDA
@pytest.mark.parametrize("flag", ["--load-in-4bit", "--load-in-8bit"])
def test_quantization_without_cuda_is_one_line(files, capsys, flag):
    for argv in (
        ["chat", "--model", str(files / "ckpt"), "-q", "Hi?", flag],
        ["eval", str(files / "ckpt"), str(files / "eval_vqa.jsonl"), flag],
    ):
        err = one_line_error(capsys, argv)
        assert flag in err and "CUDA" in err


def test_both_quantizations_together_are_refused(files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--model", str(files / "ckpt"), "--load-in-4bit", "--load-in-8bit"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_quantization_leaves_vision_tower_connector_and_head_alone(tiny_tokenizer):
    four = quantization_config("4bit", torch.bfloat16)
    assert (four.load_in_4bit, four.bnb_4bit_quant_type, four.bnb_4bit_compute_dtype) == (True, "nf4", torch.bfloat16)
    assert quantization_config("8bit", torch.float16).load_in_8bit
    model = LlavaKitForCausalLM(tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>")))
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    quantized = {name for name in linears if should_convert_module(name, four.llm_int8_skip_modules)}
    assert four.llm_int8_skip_modules == list(UNQUANTIZED_MODULES)
    assert quantized == {name for name in linears if name.startswith("language_model.model.layers.")}
    assert any(name.startswith("vision_tower.") for name in linears)
    assert any(name.startswith("multi_modal_projector.") for name in linears)


# ---- images, video, text only -----------------------------------------------------------------


def test_two_images_make_one_question_with_two_placeholders(files, capsys):
    a, b = files / "a.png", files / "b.png"
    answer = chat_answer(capsys, "--model", str(files / "ckpt"), "--image", str(a), "--image", str(b))
    model, processor = load_chat_model(files / "ckpt")
    session = ChatSession(model, processor, [a, b], max_new_tokens=4)
    conversation = session.conversation(QUESTION)
    assert conversation == [{"role": "user", "content": f"<image>\n<image>\n{QUESTION}"}]
    inputs = session.inputs(conversation)
    image_tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert image_tokens == 2 * processor.num_image_tokens and inputs["pixel_values"].shape[0] == 2

    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    direct = processor(text=prompt, images=[load_image(a), load_image(b)], return_tensors="pt")
    swapped = processor(text=prompt, images=[load_image(b), load_image(a)], return_tensors="pt")
    with torch.no_grad():
        expected, other = model(**direct).logits, model(**swapped).logits
    torch.testing.assert_close(logits(session), expected, rtol=0, atol=0)
    assert not torch.allclose(expected, other, atol=1e-4)  # both images count, in order
    assert session.ask(QUESTION) == answer


def test_video_from_a_frame_folder(files, capsys):
    frames = files / "frames"
    answer = chat_answer(capsys, "--model", str(files / "video_ckpt"), "--video", str(frames))
    model, processor = load_chat_model(files / "video_ckpt")
    session = ChatSession(model, processor, video=frames, max_new_tokens=4)
    conversation = session.conversation(QUESTION)
    assert conversation[0]["content"] == f"<video>\n{QUESTION}"
    inputs = session.inputs(conversation)
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == processor.video.num_tokens(4)
    assert "pixel_values" not in inputs

    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    direct = processor(text=prompt, videos=frames, return_tensors="pt")
    with torch.no_grad():
        expected = model(**direct).logits
    torch.testing.assert_close(logits(session), expected, rtol=0, atol=0)
    assert session.ask(QUESTION) == answer


def test_video_needs_a_model_with_a_video_token(files, capsys):
    frames = str(files / "frames")
    err = one_line_error(capsys, ["chat", "--model", str(files / "ckpt"), "--video", frames, "-q", "Hi?"])
    assert "--video" in err and "video token" in err
    err = one_line_error(capsys, ["chat", "--video", frames, "-q", "Hi?"])  # the tiny random model has none
    assert "video token" in err
    err = one_line_error(capsys, ["chat", "--model", str(files / "video_ckpt"), "--video", frames + "x", "-q", "Hi?"])
    assert "does not exist" in err


def test_text_only_chat_with_a_model_and_no_image(files, capsys):
    answer = chat_answer(capsys, "--model", str(files / "ckpt"))
    model, processor = load_chat_model(files / "ckpt")
    session = ChatSession(model, processor, max_new_tokens=4)
    conversation = session.conversation(QUESTION)
    assert conversation[0]["content"] == QUESTION
    inputs = session.inputs(conversation)
    assert "pixel_values" not in inputs and not bool((inputs["input_ids"] == processor.image_token_id).any())
    assert session.ask(QUESTION) == answer


# ---- eval -----------------------------------------------------------------------------------


def test_eval_takes_dtype(files, tmp_path, caplog):
    questions = files / "eval_vqa.jsonl"
    argv = ["eval", str(files / "ckpt"), str(questions), "--max-new-tokens", "3"]
    assert main([*argv, "--dtype", "bfloat16", "--output", str(tmp_path / "out")]) == 0
    written = [json.loads(line) for line in (tmp_path / "out" / "predictions_vqa.jsonl").read_text().splitlines()]
    model, processor = load_chat_model(files / "ckpt", dtype="bfloat16")
    expected = evaluate_files(model, processor, [questions], max_new_tokens=3, progress=False)["vqa"].records
    assert [record["prediction"] for record in written] == [record["prediction"] for record in expected]
    assert "float16 on the CPU" not in caplog.text
    assert main([*argv, "--dtype", "float16"]) == 0  # the model really loads in the dtype asked for
    assert "float16 on the CPU" in caplog.text
