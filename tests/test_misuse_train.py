"""`llavakit train` and resume misused: each bad input gets one line naming the culprit, status 2, and
leaves every file as it was; `--overwrite` and an allowed resume change do what they say.

Every case runs in a copy of the same small world (built once): a dataset, a finished tiny stage-2
run with a checkpoint at every step (`finetune/`), and a stage-1 run (`pretrain/`). Paths are
relative to the case's folder, the working directory, so the copied runs' configs still match.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import CONFIGS, Sample, recipe_overrides, write_llava_data
from llavakit.cli import main
from llavakit.train.config import load_config
from llavakit.train.run import run_training
from misuse import CliCase, run_cli_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FINETUNE = str(CONFIGS / "tiny" / "finetune.yaml")
PRETRAIN = str(CONFIGS / "tiny" / "pretrain.yaml")
DATA = Path("data/data.json")
# The finished stage-2 run of every case: 4 steps of 2 samples, a checkpoint at each.
BASE = (
    "model.connector_weights=null",
    "optimization.global_batch_size=2",
    "optimization.per_device_batch_size=2",
    "optimization.max_steps=4",
    "output.save_steps=1",
    "output.save_total_limit=null",
    "output.plot=false",
)


def train_argv(out: str, *overrides: str, data: Path | str = DATA, recipe: str = FINETUNE) -> list[str]:
    """`llavakit train` of the finished run's recipe into `out`, `overrides` last."""
    return ["train", recipe, *recipe_overrides(Path(data), Path(out), *BASE, *overrides)]


def resume_argv(*overrides: str) -> list[str]:
    return train_argv("finetune", "output.resume=true", *overrides)


def pretrain_overrides(out: str) -> list[str]:
    return recipe_overrides(
        DATA,
        Path(out),
        "optimization.global_batch_size=2",
        "optimization.per_device_batch_size=2",
        "optimization.max_steps=2",
        "output.save_steps=1",
        "output.plot=false",
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The dataset and the two finished runs, in a folder that every case copies."""
    root = tmp_path_factory.mktemp("world")
    samples = [
        Sample(f"s{i}", "<image>\nDescribe it.", "A small square.", f"{i}.png", (30 * i, 90, 200 - 20 * i))
        for i in range(8)
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        write_llava_data(Path("data"), samples)
        run_training(load_config(FINETUNE, train_argv("finetune")[2:]))
        run_training(load_config(PRETRAIN, pretrain_overrides("pretrain")))
    return root


@pytest.fixture
def case_folder(world, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the world, as the working directory."""
    shutil.copytree(world, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- setups ----------------------------------------------------------------------------------------


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def truncate(name: str) -> Callable[[Path], None]:
    """Cut the file to half its length, as a full disk or an interrupted copy would."""

    def setup(folder: Path) -> None:
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def flip_byte(name: str) -> Callable[[Path], None]:
    """Change one byte in the middle of the file (its length stays)."""

    def setup(folder: Path) -> None:
        path = folder / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    return setup


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def notes_in(name: str) -> Callable[[Path], None]:
    """A folder holding a user's file that is not a llavakit run."""

    def setup(folder: Path) -> None:
        (folder / name).mkdir()
        (folder / name / "notes.txt").write_text("mine")

    return setup


def data_inside_run(folder: Path) -> None:
    shutil.copy(folder / DATA, folder / "finetune" / "data.json")


CKPT = "finetune/checkpoint-4"

CASES = [
    # the recipe and its overrides, refused when loaded
    CliCase(
        "unknown key", lambda d: train_argv("new", "optimization.lrr=1e-3"), "unknown config key 'optimization.lrr'"
    ),
    CliCase("epochs inf", lambda d: train_argv("new", "optimization.epochs=.inf"), "'optimization.epochs' must be"),
    CliCase("epochs -1", lambda d: train_argv("new", "optimization.epochs=-1"), "'optimization.epochs' must be"),
    CliCase(
        "epochs 0, no max_steps",
        lambda d: train_argv("new", "optimization.epochs=0", "optimization.max_steps=-1"),
        "optimization.epochs=0 with optimization.max_steps<=0 trains nothing",
    ),
    CliCase("max_length 0", lambda d: train_argv("new", "data.max_length=0"), "'data.max_length' must be"),
    CliCase(
        "batch 0",
        lambda d: train_argv("new", "optimization.per_device_batch_size=0"),
        "'optimization.per_device_batch_size' must be",
    ),
    CliCase("negative lr", lambda d: train_argv("new", "optimization.lr=-1e-3"), "'optimization.lr' must be"),
    CliCase(
        "fraction 1.5",
        lambda d: train_argv("new", "data.datasets.0.fraction=1.5"),
        "'data.datasets.0.fraction' must be",
    ),
    CliCase("save_steps -1", lambda d: train_argv("new", "output.save_steps=-1"), "'output.save_steps' must be"),
    CliCase(
        "warmup 1", lambda d: train_argv("new", "optimization.warmup_ratio=1"), "'optimization.warmup_ratio' must be"
    ),
    CliCase(
        "skipped fraction 2",
        lambda d: train_argv("new", "data.max_skipped_fraction=2"),
        "'data.max_skipped_fraction' must be",
    ),
    CliCase(
        "global batch not whole",
        lambda d: train_argv("new", "optimization.global_batch_size=3"),
        "change optimization.per_device_batch_size",
    ),
    CliCase("override without =", lambda d: train_argv("new", "optimization.lr"), "'optimization.lr' must look like"),
    CliCase(
        "recipe not YAML",
        lambda d: ["train", "bad.yaml"],
        "bad.yaml is not valid YAML",
        setup=write("bad.yaml", "model: [unclosed\n"),
    ),
    CliCase(
        "recipe not a mapping",
        lambda d: ["train", "list.yaml"],
        "list.yaml must hold a mapping",
        setup=write("list.yaml", "- a\n- b\n"),
    ),
    CliCase("recipe missing", lambda d: ["train", "missing.yaml"], "missing.yaml does not exist"),
    CliCase(
        "overwrite and resume",
        lambda d: [*resume_argv(), "--overwrite"],
        "output.overwrite=true and output.resume exclude each other",
    ),
    # the run folder
    CliCase(
        "output.dir is a file",
        lambda d: train_argv("file.txt"),
        "output.dir file.txt is a file",
        setup=write("file.txt", "x"),
    ),
    CliCase(
        "output.dir under a file",
        lambda d: train_argv("file.txt/run"),
        "lies under file.txt, which is a file",
        setup=write("file.txt", "x"),
    ),
    CliCase(
        "earlier run, no --overwrite",
        lambda d: train_argv("finetune"),
        "output.dir finetune already holds earlier work",
    ),
    CliCase(
        "--overwrite on a folder that is not a run",
        lambda d: [*train_argv("mine"), "--overwrite"],
        "output.dir mine holds files that are not a llavakit run",
        setup=notes_in("mine"),
    ),
    CliCase(
        "--overwrite would delete the dataset",
        lambda d: [*train_argv("finetune", data="finetune/data.json"), "--overwrite"],
        "holds this run's input data.datasets.0.path",
        setup=data_inside_run,
    ),
    CliCase(
        "resume into another run's folder",
        lambda d: train_argv("pretrain", "output.resume=finetune/checkpoint-2"),
        "output.dir pretrain already holds earlier work",
    ),
    # resume: the checkpoint
    CliCase("resume, no checkpoint", lambda d: train_argv("new", "output.resume=true"), "new holds no checkpoint-N"),
    CliCase(
        "resume a missing checkpoint",
        lambda d: train_argv("finetune", "output.resume=finetune/checkpoint-9"),
        "checkpoint folder finetune/checkpoint-9 does not exist",
    ),
    CliCase(
        "resume, model.safetensors truncated",
        lambda d: resume_argv(),
        f"{CKPT}/model.safetensors is truncated",
        setup=truncate(f"{CKPT}/model.safetensors"),
    ),
    CliCase(
        "resume, optimizer.pt truncated",
        lambda d: resume_argv(),
        f"{CKPT}/optimizer.pt is truncated",
        setup=truncate(f"{CKPT}/optimizer.pt"),
    ),
    CliCase(
        "resume, optimizer.pt changed byte",
        lambda d: resume_argv(),
        f"{CKPT}/optimizer.pt is damaged",
        setup=flip_byte(f"{CKPT}/optimizer.pt"),
    ),
    CliCase(
        "resume, trainer_state.json truncated",
        lambda d: resume_argv(),
        f"{CKPT}/trainer_state.json is truncated",
        setup=truncate(f"{CKPT}/trainer_state.json"),
    ),
    CliCase(
        "resume, trainer_state.json missing",
        lambda d: resume_argv(),
        "trainer_state.json is missing",
        setup=remove(f"{CKPT}/trainer_state.json"),
    ),
    CliCase(
        "resume stage 1, trainable.safetensors truncated",
        lambda d: ["train", PRETRAIN, *pretrain_overrides("pretrain"), "output.resume=true"],
        "pretrain/checkpoint-2/trainable.safetensors is truncated",
        setup=truncate("pretrain/checkpoint-2/trainable.safetensors"),
    ),
    # resume: a changed config
    CliCase("resume with another lr", lambda d: resume_argv("optimization.lr=2e-3"), "optimization.lr: 0.001 -> 0.002"),
    CliCase(
        "resume with another batch",
        lambda d: resume_argv("optimization.global_batch_size=4", "optimization.per_device_batch_size=4"),
        "optimization.global_batch_size: 2 -> 4; optimization.per_device_batch_size: 2 -> 4",
    ),
    CliCase("resume with more steps", lambda d: resume_argv("optimization.max_steps=8"), "max_steps: 4 -> 8"),
    CliCase(
        "resume with another mixture",
        lambda d: resume_argv("data.datasets.0.fraction=0.5"),
        "data.datasets.0.fraction: 1.0 -> 0.5",
    ),
    CliCase("resume with another seed", lambda d: resume_argv("optimization.seed=1"), "optimization.seed: 0 -> 1"),
    # the inputs
    CliCase(
        "dataset missing",
        lambda d: train_argv("new", data="data/nowhere.json"),
        "data.datasets.0.path: dataset file data/nowhere.json does not exist",
    ),
    CliCase(
        "image folder missing",
        lambda d: train_argv("new", "data.datasets.0.image_folder=pictures"),
        "data.datasets.0.image_folder: pictures is not a folder",
    ),
    CliCase("no dataset", lambda d: train_argv("new", "data.datasets=[]"), "data.datasets is empty"),
    CliCase(
        "dataset not JSON",
        lambda d: train_argv("new", data="data/broken.json"),
        "data/broken.json is not valid JSON",
        setup=write("data/broken.json", '[{"id": "a", '),
    ),
    CliCase(
        "model.checkpoint missing",
        lambda d: train_argv("new", "model.checkpoint=nowhere"),
        "model.checkpoint: checkpoint folder nowhere does not exist",  # and no hub lookup
    ),
    CliCase(
        "model.checkpoint is a data folder",
        lambda d: train_argv("new", "model.checkpoint=data"),
        "model.checkpoint: data has no config.json: it is not a checkpoint folder",
    ),
    CliCase(
        "model.checkpoint is a stage-1 folder",
        lambda d: train_argv("new", "model.checkpoint=pretrain"),
        "model.checkpoint: pretrain is a stage-1 run folder",  # use it as model.connector_weights
    ),
    CliCase(
        "connector weights missing",
        lambda d: train_argv("new", "model.connector_weights=nowhere"),
        "model.connector_weights: nowhere does not exist",
    ),
    CliCase(
        "connector weights truncated",
        lambda d: train_argv("new", "model.connector_weights=pretrain"),
        "model.connector_weights: pretrain/trainable.safetensors is truncated",
        setup=truncate("pretrain/trainable.safetensors"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_train_misuse(case, case_folder, capsys):
    run_cli_case(case, case_folder, capsys)


# ---- what works ------------------------------------------------------------------------------------


def test_overwrite_replaces_the_earlier_run(case_folder, capsys):
    (case_folder / "finetune" / "notes.txt").write_text("from the earlier run")
    assert main([*train_argv("finetune", "optimization.max_steps=2"), "--overwrite"]) == 0
    run = case_folder / "finetune"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not (run / "notes.txt").exists()
    recorded = load_config(run / "train_config.yaml")
    assert recorded.optimization.max_steps == 2
    assert not recorded.output.overwrite  # training from the recorded file again does not delete the run
    assert [step for step, _ in json.loads((run / "losses.json").read_text())] == [1, 2]
    assert "trained 2 step(s)" in capsys.readouterr().out


def test_resume_applies_a_change_that_leaves_the_weights_alone(case_folder, caplog):
    """From step 1 into a new folder, saving every 3 steps instead of every step: the checkpoints follow
    the new interval, the run folder records it, and the weights are the uninterrupted run's."""
    caplog.set_level("INFO", logger="llavakit.train.resume")
    argv = train_argv("continued", "output.resume=finetune/checkpoint-1", "output.save_steps=3", "data.num_workers=0")
    assert main(argv) == 0
    run = case_folder / "continued"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]  # 3, and the end
    recorded = yaml.safe_load((run / "train_config.yaml").read_text())
    assert recorded["output"]["save_steps"] == 3 and recorded["output"]["dir"] == "continued"
    assert yaml.safe_load((run / "checkpoint-4" / "train_config.yaml").read_text()) == recorded
    assert "output.save_steps: 1 -> 3" in caplog.text
    expected = load_file(case_folder / "finetune" / "model.safetensors")
    got = load_file(run / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_a_damaged_newest_checkpoint_is_replaced_by_resuming_the_one_before(case_folder):
    """The error names the earlier checkpoint; resuming it rewrites the damaged one and ends as the run did."""
    run = case_folder / "finetune"
    expected = load_file(run / "model.safetensors")
    truncate(f"{CKPT}/optimizer.pt")(case_folder)
    assert main(resume_argv()) == 2
    assert main(train_argv("finetune", "output.resume=finetune/checkpoint-3")) == 0
    assert (run / "checkpoint-4" / "optimizer.pt").stat().st_size > 0 and not (run / ".staging").exists()
    got = load_file(run / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert main(resume_argv()) == 0  # the rewritten checkpoint-4 is whole again
