"""Data-parallel `llavakit eval --task`: two CPU processes (torchrun, gloo) write the answers file and the table
of one process, resume included; shards an interrupted run leaves are merged by the next run; a failing process
stops the other with a line naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import pope_eval_args
from llavakit.cli import main
from llavakit.errors import ConfigError
from llavakit.eval.parallel import Ranks, check_parallel_placement, joined_ranks, rank_device

ROOT = Path(__file__).resolve().parents[1]
THINGS = [("dog", "yes"), ("cat", "no"), ("traffic light", "yes"), ("car", "no"), ("person", "yes")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture
def pope(tmp_path):
    """Two POPE split files of five questions each; question i of a split asks about COCO image i."""
    folder, images = tmp_path / "pope", tmp_path / "val2014"
    folder.mkdir()
    images.mkdir()
    for index in range(len(THINGS)):
        colour = (40 * index + 20, 200 - 30 * index, 90)
        Image.new("RGB", (20 + 4 * index, 24), colour).save(images / f"COCO_val2014_{index:012d}.jpg")
    for split in ("random", "adversarial"):
        lines = [
            {
                "question_id": i + 1,
                "image": f"COCO_val2014_{i:012d}.jpg",
                "text": f"Is there a {thing} in the image?",
                "label": label,
            }
            for i, (thing, label) in enumerate(THINGS)
        ]
        (folder / f"coco_pope_{split}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder, images


def two_processes(args: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m llavakit.cli ARGS` on the CPU, one thread per process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command += ["-m", "llavakit.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def answer_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "pope_answers.jsonl").read_text().splitlines()]


def without_answer_ids(lines: list[dict]) -> list[dict]:
    return [{key: value for key, value in line.items() if key != "answer_id"} for line in lines]


def results(folder: Path) -> dict:
    """The results JSON without the paths of the files (the folders differ)."""
    written = json.loads((folder / "pope_results.json").read_text())
    return {key: value for key, value in written.items() if key != "files"}


@pytest.mark.slow
def test_two_processes_write_the_answers_and_table_of_one_process(checkpoint, pope, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for limit in (["--limit", "5"], []):  # the second run of each resumes the first
        assert main(pope_eval_args(checkpoint, pope, one, *limit)) == 0
        done = two_processes(pope_eval_args(checkpoint, pope, two, *limit))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("POPE (pope)") == 1  # rank 0 alone scores and prints
    assert "5 answers kept from an earlier run, 5 generated" in done.stdout

    single, parallel = answer_lines(one), answer_lines(two)
    assert len(parallel) == 10 and len({line["answer_id"] for line in parallel}) == 10
    as_set = {json.dumps(line, sort_keys=True) for line in without_answer_ids(parallel)}
    assert as_set == {json.dumps(line, sort_keys=True) for line in without_answer_ids(single)}
    assert without_answer_ids(parallel) == without_answer_ids(single)  # merged in question order, too
    assert results(two) == results(one)
    assert results(two)["counts"] == {"questions": 10, "answered": 10, "kept": 5, "generated": 5, "skipped": 0}
    for name in ("pope_results.md", "pope_scored.jsonl", "pope_run.json"):
        assert (two / name).read_text() == (one / name).read_text(), name
    assert not list(two.glob("pope_answers.rank*"))  # the shards are merged and removed


@pytest.mark.slow
def test_a_failing_process_stops_the_other_and_one_process_resumes_its_shards(checkpoint, pope, tmp_path, capsys):
    (pope[1] / "COCO_val2014_000000000001.jpg").write_bytes(b"not a picture")  # rank 1's question only
    out = tmp_path / "eval"
    done = two_processes(pope_eval_args(checkpoint, pope, out, "--limit", "2"))
    assert done.returncode != 0
    assert "process 1 of 2 stopped the run: DataError: question 'random-2'" in done.stderr
    assert done.stderr.count("llavakit eval: error: ") == 2  # one line each; torchrun's own report follows
    assert "llavakit/eval/" not in done.stderr  # no traceback from llavakit
    assert [path.name for path in out.glob("pope_answers.rank*")] == ["pope_answers.rank0.jsonl"]

    # one process takes over: rank 0's answer is kept, the broken image skipped on request
    assert main(pope_eval_args(checkpoint, pope, out, "--limit", "2", "--skip-bad-images")) == 0
    assert "1 answers kept from an earlier run, 0 generated" in capsys.readouterr().out
    assert [line["question_id"] for line in answer_lines(out)] == ["random-1"]
    assert results(out)["counts"] == {"questions": 2, "answered": 1, "kept": 1, "generated": 0, "skipped": 1}
    assert not list(out.glob("pope_answers.rank*"))


def test_leftover_shards_are_merged_once_in_question_order(checkpoint, pope, tmp_path, capsys):
    whole = tmp_path / "whole"
    assert main(pope_eval_args(checkpoint, pope, whole, "--limit", "6")) == 0
    lines = [json.dumps(line) + "\n" for line in answer_lines(whole)]

    # an interrupted two-process run: answers merged so far, and the shards (one cut mid-line, one
    # holding a line merged already)
    out = tmp_path / "interrupted"
    out.mkdir()
    shutil.copy(whole / "pope_run.json", out)
    (out / "pope_answers.jsonl").write_text(lines[0] + lines[1])
    (out / "pope_answers.rank0.jsonl").write_text(lines[4] + lines[2] + lines[5][:20])
    (out / "pope_answers.rank1.jsonl").write_text(lines[1] + lines[3])
    capsys.readouterr()
    assert main(pope_eval_args(checkpoint, pope, out, "--limit", "6")) == 0
    assert "5 answers kept from an earlier run, 1 generated" in capsys.readouterr().out
    merged = answer_lines(out)
    assert [json.dumps(line) + "\n" for line in merged[:5]] == lines[:5]  # kept as written, in question order
    assert without_answer_ids(merged) == without_answer_ids(answer_lines(whole))
    assert results(out)["metrics"] == results(whole)["metrics"]
    assert not list(out.glob("pope_answers.rank*"))

    # shards without the run's settings are refused; --overwrite removes them too
    (out / "pope_run.json").unlink()
    (out / "pope_answers.jsonl").unlink()
    (out / "pope_answers.rank1.jsonl").write_text(lines[3])
    assert main(pope_eval_args(checkpoint, pope, out, "--limit", "1")) == 2
    assert "pope_answers.rank1.jsonl exists without pope_run.json" in capsys.readouterr().err
    assert main(pope_eval_args(checkpoint, pope, out, "--limit", "1", "--overwrite")) == 0
    assert not list(out.glob("pope_answers.rank*")) and len(answer_lines(out)) == 1


def test_ranks_deal_round_robin_and_raise_as_one_process():
    ranks = [Ranks(rank, 3) for rank in range(3)]
    assert [r.share(list(range(7))) for r in ranks] == [[0, 3, 6], [1, 4], [2, 5]]
    assert Ranks().on_main(lambda: 5) == 5 and Ranks().everywhere(lambda: "a") == ["a"]
    with pytest.raises(KeyError):  # one process: the error itself, not wrapped
        Ranks().everywhere(lambda: {}["missing"])


def test_launch_environment_and_placement(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with joined_ranks() as ranks:
        assert ranks == Ranks()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set"), joined_ranks():
        pass
    two = Ranks(1, 2, local_rank=1)
    assert rank_device("cuda", None, two) == "cuda:1" and rank_device(None, "4bit", two) == "cuda:1"
    assert rank_device(None, None, two) is None and rank_device("cuda", None, Ranks()) == "cuda"
    assert rank_device("cuda:0", None, two) == "cuda:0"
    check_parallel_placement("auto", Ranks())
    with pytest.raises(ConfigError, match="--device-map auto spreads one model over all GPUs"):
        check_parallel_placement("auto", two)
