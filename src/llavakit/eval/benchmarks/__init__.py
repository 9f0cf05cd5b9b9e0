"""The benchmarks of the LLaVA / LLaVA-1.5 / OneVision tables, read from their published files.

    from llavakit.eval.benchmarks import get_benchmark, load_benchmark, score_benchmark
    data = load_benchmark("pope", ["data/pope/coco"], image_folder="data/coco/val2014")
    score = score_benchmark("pope", data, {"random-1": "Yes", ...})

`score_benchmark` is a pure function of the data and the answers keyed by question id, so
answers from several processes (merged by id) or from another tool score exactly alike.
docs/evaluation.md lists each task's files, prompt and scoring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from llavakit.errors import ConfigError
from llavakit.eval.benchmarks.base import Benchmark, BenchmarkData, BenchmarkScore, Question
from llavakit.eval.benchmarks.gqa import load_gqa, score_gqa
from llavakit.eval.benchmarks.llava_bench import load_llava_bench, score_llava_bench
from llavakit.eval.benchmarks.mm_vet import load_mm_vet, score_mm_vet
from llavakit.eval.benchmarks.mmbench import load_mmbench, score_mmbench
from llavakit.eval.benchmarks.mme import load_mme, score_mme
from llavakit.eval.benchmarks.pope import load_pope, score_pope
from llavakit.eval.benchmarks.scienceqa import load_scienceqa, score_scienceqa
from llavakit.eval.benchmarks.seed import load_seed, score_seed
from llavakit.eval.benchmarks.textvqa import load_textvqa, score_textvqa
from llavakit.eval.benchmarks.vqa import load_vizwiz, load_vqav2, score_vqa, vizwiz_submission, vqav2_submission
from llavakit.eval.judge import Judge

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkData",
    "BenchmarkScore",
    "Question",
    "get_benchmark",
    "load_benchmark",
    "score_benchmark",
]

BENCHMARKS: Mapping[str, Benchmark] = {
    item.name: item
    for item in (
        Benchmark("vqav2", "VQAv2", "questions JSON [+ annotations JSON] [+ test2015 questions JSON]", load_vqav2,
                  score_vqa, "accuracy", submission=vqav2_submission),
        Benchmark("vizwiz", "VizWiz", "val.json or test.json", load_vizwiz, score_vqa, "accuracy",
                  submission=vizwiz_submission),
        Benchmark("gqa", "GQA", "testdev_balanced_questions.json", load_gqa, score_gqa, "accuracy"),
        Benchmark("textvqa", "TextVQA", "TextVQA_0.5.1_val.json [+ TextVQA_Rosetta_OCR_v0.2_val.json]", load_textvqa,
                  score_textvqa, "accuracy"),
        Benchmark("pope", "POPE", "folder of coco_pope_{random,popular,adversarial}.json", load_pope, score_pope, "f1"),
        Benchmark("scienceqa", "ScienceQA-IMG", "folder of problems.json and pid_splits.json", load_scienceqa,
                  score_scienceqa, "accuracy"),
        Benchmark("mmbench", "MMBench", "mmbench_dev_20230712.tsv", load_mmbench, score_mmbench, "accuracy"),
        Benchmark("seed", "SEED-Bench (image)", "SEED-Bench.json", load_seed, score_seed, "accuracy"),
        Benchmark("mme", "MME", "MME_Benchmark_release_version folder", load_mme, score_mme, "perception",
                  raw_metrics=frozenset({"perception", "cognition", "score"})),
        Benchmark("llava_bench", "LLaVA-Bench", "llava-bench-in-the-wild folder (or the COCO qa90 files)",
                  load_llava_bench, score_llava_bench, "relative", max_new_tokens=1024,
                  raw_metrics=frozenset({"model_score", "reference_score"}), judged=True, judge_temperature=0.2),
        Benchmark("mm_vet", "MM-Vet", "mm-vet.json (images/ beside it)", load_mm_vet, score_mm_vet, "score",
                  max_new_tokens=1024, judged=True, judge_temperature=0.0),
    )
}  # fmt: skip


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`; an unknown name lists the known ones."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def load_benchmark(name: str, paths: Sequence[str | Path], image_folder: str | Path | None = None) -> BenchmarkData:
    """Read a benchmark's published files (see each task's `data_help`); every file is checked here."""
    benchmark = get_benchmark(name)
    if not paths:
        raise ConfigError(f"{name}: --data needs {benchmark.data_help}")
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"{name}: --data {path} does not exist (expected {benchmark.data_help})")
    return benchmark.load([Path(path) for path in paths], Path(image_folder) if image_folder is not None else None)


def score_benchmark(
    name: str, data: BenchmarkData, predictions: Mapping[str, str], judge: Judge | None = None
) -> BenchmarkScore:
    """The benchmark's metrics for `predictions` (answers keyed by question id); pure except for the judge's calls."""
    return get_benchmark(name).score(data, predictions, judge)
