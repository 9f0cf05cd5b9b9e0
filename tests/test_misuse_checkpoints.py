"""Bad inputs to `import`, `export`, `chat` and `eval` (and their Python API): one line naming the culprit.

Each row runs `llavakit ...` in a folder holding copies of one tiny llavakit checkpoint, its
transformers export, a stage-1 run folder, a question file and an image (built once per
module), after the row's `setup` breaks something. `run_cli_case` checks the exit status, the
culprit in the message, no traceback, and that no file that existed before changed.

Run: .venv/bin/python -m pytest tests/test_misuse_checkpoints.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import llavakit
from conftest import original_llava_checkpoint
from llavakit.errors import CheckpointError, DeviceError, OutputExistsError, OutputPathError
from llavakit.model.checkpoint import check_device, load_checkpoint, load_model
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config
from misuse import CliCase, file_hashes, run_cli_case

QUESTION = {"id": "q1", "image": "red.png", "question": "What colour is it?", "answer": "red"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_tokenizer) -> Path:
    """ckpt/ (llavakit), hf/ (its transformers export), stage1/ (connector only), data/ (questions, image)."""
    root = tmp_path_factory.mktemp("assets")
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaKitForCausalLM(config)
    model.save_pretrained(root / "ckpt")
    LlavaKitProcessor.from_model_config(tiny_tokenizer, config, template="vicuna_v1").save_pretrained(root / "ckpt")
    llavakit.export_checkpoint(root / "ckpt", root / "hf")
    shutil.copytree(root / "ckpt", root / "stage1", ignore=shutil.ignore_patterns("model.safetensors"))
    connector = {k: v for k, v in model.state_dict().items() if k.startswith("multi_modal_projector.")}
    save_file({k: v.contiguous() for k, v in connector.items()}, root / "stage1" / "trainable.safetensors")
    (root / "data").mkdir()
    Image.new("RGB", (24, 20), (220, 30, 30)).save(root / "data" / "red.png")
    (root / "data" / "eval_vqa.jsonl").write_text(json.dumps(QUESTION) + "\n")
    return root


# ---- setups: each breaks one thing in the case folder ----------------------------------------------


def truncate(relative: str):
    def setup(folder: Path) -> None:
        path = folder / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def write(relative: str, text: str):
    def setup(folder: Path) -> None:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)

    return setup


def write_bytes(relative: str, data: bytes):
    def setup(folder: Path) -> None:
        (folder / relative).write_bytes(data)

    return setup


def remove(*relatives: str):
    def setup(folder: Path) -> None:
        for relative in relatives:
            (folder / relative).unlink()

    return setup


def sharded_with_missing_shard(folder: Path) -> None:
    """ckpt/ as an index naming two shards, one of them absent."""
    weights = load_file(folder / "ckpt" / "model.safetensors")
    names = sorted(weights)
    index = {
        name: ("model-00001-of-00002.safetensors" if i % 2 else "model-00002-of-00002.safetensors")
        for i, name in enumerate(names)
    }
    save_file({n: weights[n] for n in names[1::2]}, folder / "ckpt" / "model-00001-of-00002.safetensors")
    (folder / "ckpt" / "model.safetensors").unlink()
    (folder / "ckpt" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))


def lora_adapter(folder: Path) -> None:
    (folder / "lora").mkdir()
    (folder / "lora" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "lora" / "adapter_model.safetensors").write_bytes(
        (folder / "stage1" / "trainable.safetensors").read_bytes()
    )


def original_llava(folder: Path, vision_inside: bool = False) -> None:
    (folder / "parts").mkdir()
    original_llava_checkpoint(folder / "parts", "clip", "llama", "mlp2x_gelu", vision_inside=vision_inside)


def truncated_original_llava(folder: Path) -> None:
    original_llava(folder, vision_inside=True)  # weights in pytorch_model.bin
    truncate("parts/llava/pytorch_model.bin")(folder)


def earlier_results(relative: str):
    return write(f"{relative}/results.json", '{"vqa": {"metrics": {"accuracy": 0.9}}}\n')


def q(folder: Path) -> str:
    return str(folder / "data" / "eval_vqa.jsonl")


def eval_args(folder: Path, *extra: str, model: str = "ckpt") -> list[str]:
    return ["eval", str(folder / model), q(folder), "--max-new-tokens", "2", *extra]


def chat_args(folder: Path, *extra: str) -> list[str]:
    return ["chat", "--image", str(folder / "data" / "red.png"), "-q", "What is it?", "--max-new-tokens", "2", *extra]


NO_CUDA = (
    []
    if torch.cuda.is_available()
    else [
        CliCase(
            "chat: --device cuda without a GPU",
            lambda d: chat_args(d, "--model", str(d / "ckpt"), "--device", "cuda"),
            "'cuda' is not available",
        ),
        CliCase(
            "eval: --device cuda without a GPU", lambda d: eval_args(d, "--device", "cuda"), "'cuda' is not available"
        ),
    ]
)

CASES = [
    # ---- import ----
    CliCase(
        "import: source does not exist",
        lambda d: ["import", str(d / "nowhere"), str(d / "out")],
        lambda d: f"{d / 'nowhere'} does not exist",
    ),
    CliCase(
        "import: hub name is not looked up",
        lambda d: ["import", "llava-hf/llava-1.5-7b-hf", str(d / "out")],
        "llava-hf/llava-1.5-7b-hf does not exist",
    ),
    CliCase(
        "import: truncated safetensors",
        lambda d: ["import", str(d / "hf"), str(d / "out")],
        lambda d: str(d / "hf" / "model.safetensors"),
        truncate("hf/model.safetensors"),
    ),
    CliCase(
        "import: truncated pytorch_model.bin (original LLaVA)",
        lambda d: ["import", str(d / "parts" / "llava"), str(d / "out")],
        lambda d: str(d / "parts" / "llava" / "pytorch_model.bin"),
        truncated_original_llava,
    ),
    CliCase(
        "import: config.json is not JSON",
        lambda d: ["import", str(d / "hf"), str(d / "out")],
        lambda d: str(d / "hf" / "config.json"),
        write("hf/config.json", "{not json"),
    ),
    CliCase(
        "import: processor config is not JSON",
        lambda d: ["import", str(d / "hf"), str(d / "out")],
        lambda d: str(d / "hf" / "processor_config.json"),
        write("hf/processor_config.json", "{"),
    ),
    CliCase(
        "import: weights missing",
        lambda d: ["import", str(d / "hf"), str(d / "out")],
        "has no model weights",
        remove("hf/model.safetensors"),
    ),
    CliCase(
        "import: tokenizer missing",
        lambda d: ["import", str(d / "hf"), str(d / "out")],
        "no tokenizer files",
        remove("hf/tokenizer.json", "hf/tokenizer_config.json"),
    ),
    CliCase(
        "import: source is a llavakit checkpoint",
        lambda d: ["import", str(d / "ckpt"), str(d / "out")],
        "already a llavakit checkpoint",
    ),
    CliCase("import: source is a data folder", lambda d: ["import", str(d / "data"), str(d / "out")], "eval_vqa.jsonl"),
    CliCase(
        "import: non-empty output without --overwrite",
        lambda d: ["import", str(d / "hf"), str(d / "out")],
        lambda d: f"{d / 'out'} already holds",
        write("out/model.safetensors.index.json", "{}"),
    ),
    CliCase(
        "import: output under a file",
        lambda d: ["import", str(d / "hf"), str(d / "data" / "red.png" / "out")],
        lambda d: f"lies under {d / 'data' / 'red.png'}",
    ),
    CliCase(
        "import: --overwrite of the source itself",
        lambda d: ["import", str(d / "hf"), str(d / "hf"), "--overwrite"],
        "holds the source",
    ),
    # ---- export ----
    CliCase(
        "export: checkpoint does not exist",
        lambda d: ["export", str(d / "nowhere"), str(d / "out")],
        lambda d: f"{d / 'nowhere'} does not exist",
    ),
    CliCase(
        "export: truncated safetensors",
        lambda d: ["export", str(d / "ckpt"), str(d / "out")],
        lambda d: str(d / "ckpt" / "model.safetensors"),
        truncate("ckpt/model.safetensors"),
    ),
    CliCase(
        "export: safetensors of zero bytes",
        lambda d: ["export", str(d / "ckpt"), str(d / "out")],
        "model.safetensors is not a readable safetensors file",
        write_bytes("ckpt/model.safetensors", b""),
    ),
    CliCase(
        "export: index names a missing shard",
        lambda d: ["export", str(d / "ckpt"), str(d / "out")],
        "model-00002-of-00002.safetensors, which is missing",
        sharded_with_missing_shard,
    ),
    CliCase(
        "export: stage-1 run folder",
        lambda d: ["export", str(d / "stage1"), str(d / "out")],
        lambda d: f"model.connector_weights={d / 'stage1'}",
    ),
    CliCase("export: transformers folder", lambda d: ["export", str(d / "hf"), str(d / "out")], "llavakit import"),
    CliCase(
        "export: non-empty output without --overwrite",
        lambda d: ["export", str(d / "ckpt"), str(d / "hf")],
        lambda d: f"{d / 'hf'} already holds",
    ),
    CliCase(
        "export: output is a file",
        lambda d: ["export", str(d / "ckpt"), str(d / "data" / "red.png")],
        lambda d: f"{d / 'data' / 'red.png'} is a file",
    ),
    CliCase(
        "export: --overwrite of a folder holding the checkpoint",
        lambda d: ["export", str(d / "ckpt"), str(d), "--overwrite"],
        "holds the source",
    ),
    # ---- chat ----
    CliCase(
        "chat: --model does not exist",
        lambda d: chat_args(d, "--model", str(d / "nowhere")),
        lambda d: f"{d / 'nowhere'} does not exist",
    ),
    CliCase(
        "chat: --model is a data folder",
        lambda d: chat_args(d, "--model", str(d / "data")),
        "no config.json: it is not a checkpoint folder (it holds data files such as",
    ),
    CliCase(
        "chat: --model is a stage-1 folder", lambda d: chat_args(d, "--model", str(d / "stage1")), "stage-1 run folder"
    ),
    CliCase(
        "chat: --model is a transformers folder",
        lambda d: chat_args(d, "--model", str(d / "hf")),
        lambda d: f"llavakit import {d / 'hf'} OUT",
    ),
    CliCase(
        "chat: --model is a LoRA adapter folder",
        lambda d: chat_args(d, "--model", str(d / "lora")),
        "LoRA adapter folder",
        lora_adapter,
    ),
    CliCase(
        "chat: config.json is not JSON",
        lambda d: chat_args(d, "--model", str(d / "ckpt")),
        lambda d: str(d / "ckpt" / "config.json"),
        write("ckpt/config.json", "model_type: llavakit"),
    ),
    CliCase(
        "chat: processor file is not JSON",
        lambda d: chat_args(d, "--model", str(d / "ckpt")),
        "llavakit_processor.json",
        write("ckpt/llavakit_processor.json", ""),
    ),
    CliCase(
        "chat: processor file missing",
        lambda d: chat_args(d, "--model", str(d / "ckpt")),
        "llavakit_processor.json",
        remove("ckpt/llavakit_processor.json"),
    ),
    CliCase(
        "chat: --model without model weights",
        lambda d: chat_args(d, "--model", str(d / "ckpt")),
        "has a llavakit config.json but no model weights",
        remove("ckpt/model.safetensors"),
    ),
    CliCase(
        "chat: --model is an original LLaVA folder",
        lambda d: chat_args(d, "--model", str(d / "parts" / "llava")),
        "is an original LLaVA checkpoint",
        original_llava,
    ),
    CliCase(
        "chat: --device cuda:99",
        lambda d: chat_args(d, "--model", str(d / "ckpt"), "--device", "cuda:99"),
        "'cuda:99' is not available",
    ),
    CliCase(
        "chat: --device is no device name", lambda d: chat_args(d, "--device", "gpu0"), "'gpu0' is not a device name"
    ),
    CliCase(
        "chat: --image does not exist",
        lambda d: ["chat", "--image", str(d / "none.png"), "-q", "Hi?"],
        lambda d: str(d / "none.png"),
    ),
    CliCase("chat: --max-new-tokens 0", lambda d: chat_args(d, "--max-new-tokens", "0"), "--max-new-tokens"),
    # ---- eval ----
    CliCase(
        "eval: --output is a file (no answer generated)",
        lambda d: eval_args(d, "--output", str(d / "data" / "red.png")),
        lambda d: f"{d / 'data' / 'red.png'} is a file",
    ),
    CliCase(
        "eval: --output is checked before the model",
        lambda d: eval_args(d, "--output", str(d / "data" / "red.png" / "x"), model="nowhere"),
        "lies under",
    ),
    CliCase(
        "eval: --output with earlier results",
        lambda d: eval_args(d, "--output", str(d / "eval")),
        lambda d: f"{d / 'eval'} already holds",
        earlier_results("eval"),
    ),
    CliCase(
        "eval: --overwrite of the folder holding the questions",
        lambda d: eval_args(d, "--output", str(d / "data"), "--overwrite"),
        "holds the input",
    ),
    CliCase(
        "eval: question file does not exist",
        lambda d: ["eval", str(d / "ckpt"), str(d / "data" / "eval_pope.jsonl")],
        "eval_pope.jsonl does not exist",
    ),
    CliCase("eval: unknown --task", lambda d: eval_args(d, "--task", "bleu"), "unknown evaluation task 'bleu'"),
    CliCase(
        "eval: malformed question line",
        lambda d: eval_args(d),
        "eval_vqa.jsonl line 2: not valid JSON",
        write("data/eval_vqa.jsonl", json.dumps(QUESTION) + "\n{oops\n"),
    ),
    CliCase(
        "eval: question text with a lone surrogate",
        lambda d: eval_args(d),
        "question 'q1'",
        write("data/eval_vqa.jsonl", json.dumps({**QUESTION, "question": "\ud800?"}) + "\n"),
    ),
    CliCase(
        "eval: question file is not UTF-8",
        lambda d: eval_args(d),
        "not UTF-8",
        write_bytes("data/eval_vqa.jsonl", b"\xff\xfe{}\n"),
    ),
    CliCase("eval: model is a data folder", lambda d: eval_args(d, model="data"), "has no config.json"),
    CliCase("eval: model is a stage-1 folder", lambda d: eval_args(d, model="stage1"), "model.connector_weights="),
    CliCase("eval: model is a transformers folder", lambda d: eval_args(d, model="hf"), "llavakit import"),
    CliCase(
        "eval: truncated safetensors",
        lambda d: eval_args(d),
        "truncated or damaged",
        truncate("ckpt/model.safetensors"),
    ),
    CliCase(
        "eval: model does not exist",
        lambda d: eval_args(d, model="nowhere"),
        lambda d: f"{d / 'nowhere'} does not exist",
    ),
    CliCase("eval: --device cuda:3", lambda d: eval_args(d, "--device", "cuda:3"), "'cuda:3' is not available"),
    CliCase("eval: --batch-size 0", lambda d: eval_args(d, "--batch-size", "0"), "batch size"),
    *NO_CUDA,
]


@pytest.fixture
def case_folder(tmp_path, assets) -> Path:
    shutil.copytree(assets, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=str)
def test_misuse(case, case_folder, capsys, one_torch_thread):
    run_cli_case(case, case_folder, capsys)


# ---- overwrite: the folder is emptied first, so nothing stale stays --------------------------------


@pytest.mark.parametrize("command", ["import", "export"])
def test_overwrite_leaves_no_stale_files(command, case_folder, capsys):
    out = case_folder / "out"
    out.mkdir()
    (out / "model.safetensors.index.json").write_text('{"weight_map": {"x": "model-00001-of-00002.safetensors"}}')
    (out / "model-00001-of-00002.safetensors").write_bytes(b"old")
    source = case_folder / ("hf" if command == "import" else "ckpt")
    assert main_quiet([command, str(source), str(out), "--overwrite"], capsys) == 0
    assert not (out / "model.safetensors.index.json").exists()
    assert not (out / "model-00001-of-00002.safetensors").exists()
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_eval_overwrite_replaces_earlier_results(case_folder, capsys):
    out = case_folder / "eval"
    earlier_results("eval")(case_folder)
    (out / "predictions_ocr.jsonl").write_text("{}\n")
    assert main_quiet(eval_args(case_folder, "--output", str(out), "--overwrite"), capsys) == 0
    assert sorted(p.name for p in out.iterdir()) == ["predictions_vqa.jsonl", "results.json", "results.md"]
    assert json.loads((out / "results.json").read_text())["vqa"]["metrics"]["n"] == 1


def main_quiet(argv: list[str], capsys) -> int:
    from llavakit.cli import main

    status = main(argv)
    output = capsys.readouterr()
    assert "Traceback" not in output.out + output.err
    return status


# ---- the Python API raises the typed errors ----------------------------------------------------------


def test_python_api_raises_typed_errors(case_folder):
    d = case_folder
    with pytest.raises(CheckpointError, match="does not exist"):
        llavakit.import_checkpoint(d / "nowhere", d / "out")
    with pytest.raises(OutputExistsError, match="already holds"):
        llavakit.export_checkpoint(d / "ckpt", d / "hf")
    with pytest.raises(OutputPathError, match="is a file"):
        llavakit.import_checkpoint(d / "hf", d / "data" / "red.png")
    with pytest.raises(CheckpointError, match="stage-1"):
        load_checkpoint(d / "stage1", LlavaKitProcessor)
    with pytest.raises(CheckpointError, match="llavakit import"):
        load_model(d / "hf")
    with pytest.raises(DeviceError, match="cuda:99"):
        check_device("cuda:99")
    assert check_device("cpu") == torch.device("cpu")


def test_weights_that_do_not_fit_the_config_are_refused(case_folder):
    """A missing weight would be silently random: refused, naming the key."""
    path = case_folder / "ckpt" / "model.safetensors"
    weights = load_file(path)
    weights.pop("multi_modal_projector.layers.0.bias")
    save_file(weights, path)
    before = file_hashes(case_folder)
    with pytest.raises(CheckpointError, match=r"missing keys: multi_modal_projector\.layers\.0\.bias"):
        load_model(case_folder / "ckpt")
    assert file_hashes(case_folder) == before


def test_a_good_checkpoint_loads(case_folder):
    model, processor = load_checkpoint(case_folder / "ckpt", LlavaKitProcessor)
    assert not model.training and processor.image_token == "<image>"
