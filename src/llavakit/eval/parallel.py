"""Data-parallel benchmark runs: each process answers its share of the questions, rank 0 merges and scores.

    torchrun --nproc_per_node 4 -m llavakit.cli eval CKPT --task pope --data pope/coco --output runs/eval
    accelerate launch --num_processes 4 -m llavakit.cli eval CKPT --task pope --data pope/coco --output runs/eval

Both launchers name each process in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); `joined_ranks` joins them in a gloo group. The group only carries small Python objects
(answers, counts, errors), so gloo serves whether the model runs on CPUs or GPUs, and each process
puts its model on its own GPU (`rank_device`).

Why answers stay identical to one process's: the questions still to answer are dealt out round robin
(`questions[rank::world]`), each process decodes greedily with the same left-padded runner (whose
batched answers equal one-by-one answers), and scoring is a pure function of the answers keyed by
question id, run once on rank 0. Each process appends to its own shard file (no two processes write
one file); rank 0 merges the shards into `<task>_answers.jsonl` in question order. A run that is
interrupted leaves the shards, and the next run (with any number of processes) merges them first,
so resuming works as with one process. An error on any process stops every process with a line
saying which one failed, instead of leaving the others waiting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from llavakit.errors import ConfigError, LlavaKitError
from llavakit.eval.answers import append_answers, read_answer_lines
from llavakit.eval.benchmark_run import AnswerRun, OutputFiles, answer_questions
from llavakit.eval.benchmarks.base import Question

T = TypeVar("T")

# How long a process waits for the others at a meeting point. Ranks finish their shares at different
# times, and a crashed process is caught by the launcher, which stops the rest; so the wait is long.
WAIT_LIMIT = timedelta(hours=24)
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class OtherRankError(LlavaKitError):
    """Another process of the run failed; its own error is printed by that process."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (one process: rank 0 of 1, no group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's items, dealt round robin so every process gets a like mix of the benchmark."""
        return list(items[self.rank :: self.world_size])

    def everywhere(self, work: Callable[[], T]) -> list[T]:
        """Every process's result of `work`, on every process; if any process fails, every process raises.

        The failing process raises its own error; the others raise an `OtherRankError` naming it, so
        none is left waiting for a process that stopped.
        """
        if self.world_size == 1:
            return [work()]
        import torch.distributed as dist

        result, failure = None, None
        try:
            result = work()
        except Exception as error:
            failure = error
        message = None if failure is None else f"{type(failure).__name__}: {failure}"
        reports: list[Any] = [None] * self.world_size
        dist.all_gather_object(reports, (result, message), group=self.group)  # (result, error message) per rank
        if failure is not None:
            raise failure
        for rank, (_, message) in enumerate(reports):
            if message is not None:
                raise OtherRankError(f"process {rank} of {self.world_size} stopped the run: {message}")
        return [value for value, _ in reports]

    def on_main(self, work: Callable[[], T]) -> T:
        """`work` done once, by rank 0 (files it alone writes), its result handed to every process."""
        return self.everywhere(work if self.is_main else _nothing)[0]


def _nothing() -> None:
    return None


@contextmanager
def joined_ranks() -> Iterator[Ranks]:
    """The processes of a `torchrun` / `accelerate launch` run joined in a gloo group; one process alone: none.

    A group the caller already made (of any backend) is reused, with a gloo group beside it for the
    Python objects; a group made here is closed on the way out, while the interpreter is whole.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or "1")
    if world <= 1:
        yield Ranks()
        return
    missing = [name for name in LAUNCHER_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start several processes with torchrun or "
            "accelerate launch, or unset WORLD_SIZE"
        )
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", timeout=WAIT_LIMIT)
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=WAIT_LIMIT)
    rank = dist.get_rank()
    try:
        yield Ranks(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)), group)
    finally:
        if group is not None:
            dist.destroy_process_group(group)
        if created:
            dist.destroy_process_group()


# ---- placement ----------------------------------------------------------------------------------


def check_parallel_placement(device_map: str | None, ranks: Ranks) -> None:
    """A device map spreads one model over every GPU, which several processes cannot each do."""
    if device_map is not None and ranks.world_size > 1:
        raise ConfigError(
            f"--device-map {device_map} spreads one model over all GPUs, but {ranks.world_size} processes each "
            "load their own copy: leave it out (each process then takes its own GPU with --device cuda), or run "
            "one process"
        )


def rank_device(device: str | None, quantization: str | None, ranks: Ranks) -> str | None:
    """This process's device: a bare `cuda` (also quantization's default) becomes its own GPU, cuda:LOCAL_RANK."""
    if ranks.world_size > 1 and (device == "cuda" or (device is None and quantization is not None)):
        return f"cuda:{ranks.local_rank}"
    return device


# ---- answers ------------------------------------------------------------------------------------


def _answer_key(record: Mapping[str, Any]) -> tuple[str, Any]:
    """What identifies one of our answers: the question id as written and the prompt (MME repeats ids)."""
    return str(record["question_id"]), record.get("prompt")


def merge_shards(files: OutputFiles, questions: Sequence[Question]) -> int:
    """Append the shard files' answers to the answers file in question order, then remove the shards.

    An answer already in the answers file (a merge cut short before the shards were removed) is not
    written twice; a shard's line cut off mid-write is dropped. Answers to questions outside
    `questions` (an earlier run without `--limit`) are kept, after the others. Returns how many were added.
    """
    shards = files.shards()
    if not shards:
        return 0
    present = set()
    if files.answers.exists():
        present = {_answer_key(record) for _, record in read_answer_lines(files.answers, own=True)}
    added: dict[tuple[str, Any], dict[str, Any]] = {}
    for shard in shards:
        for _, record in read_answer_lines(shard, own=True):
            key = _answer_key(record)
            if key not in present and key not in added:
                added[key] = record
    order = {(str(q.source_id), q.prompt): index for index, q in enumerate(questions)}
    records = sorted(added.values(), key=lambda record: order.get(_answer_key(record), len(order)))
    if records:
        append_answers(files.answers, records)
    for shard in shards:
        shard.unlink()
    return len(records)


def combined_run(runs: Sequence[AnswerRun], questions: Sequence[Question]) -> AnswerRun:
    """Every process's answers as one run, in question order, as one process would hold them."""
    predictions: dict[str, str] = {}
    for run in runs:
        predictions.update(run.predictions)
    order = {question.id: index for index, question in enumerate(questions)}
    skipped = sorted((item for run in runs for item in run.skipped), key=lambda item: order.get(item[0], len(order)))
    return AnswerRun(
        {q.id: predictions[q.id] for q in questions if q.id in predictions},
        kept=sum(run.kept for run in runs),
        generated=sum(run.generated for run in runs),
        skipped=skipped,
    )


def answer_shared(
    ranks: Ranks,
    model: Any,
    processor: Any,
    questions: Sequence[Question],
    files: OutputFiles | None,
    **options: Any,
) -> AnswerRun:
    """The questions answered by all processes together (see the module docstring); every process gets the whole.

    One process writes to the answers file itself, as `answer_questions` does; several write shards,
    which rank 0 merges once every process is done. `options` go to `answer_questions`.
    """
    mine = ranks.share(questions)
    path = None if files is None else files.answers if ranks.world_size == 1 else files.shard(ranks.rank)
    runs = ranks.everywhere(lambda: answer_questions(model, processor, mine, path, progress=ranks.is_main, **options))
    if files is not None and ranks.world_size > 1:
        ranks.on_main(lambda: merge_shards(files, questions))
    return combined_run(runs, questions)
