"""The `llavakit` command: one subcommand per job, each a thin shell over a library function.

Run `llavakit --help`. Heavy imports happen inside the subcommand, so help is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llavakit.ablate.command import add_ablate_parser
from llavakit.demo.settings import PRESETS
from llavakit.errors import LlavaKitError
from llavakit.loading_options import add_loading_options, quantization_mode
from llavakit.serve.command import add_serve_parser


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    """`--device`, `--dtype`, `--device-map`, `--load-in-4bit/8bit` as `load_checkpoint`'s keyword arguments."""
    quantization = quantization_mode(args.load_in_4bit, args.load_in_8bit)
    return dict(device=args.device, dtype=args.dtype, device_map=args.device_map, quantization=quantization)


def _chat_media(args: argparse.Namespace) -> tuple[list[Path], Path | None]:
    """The images and video to ask about, checked before the model loads.

    Without --image and --video: the bundled picture for the tiny random model, nothing (text
    only) for a --model checkpoint.
    """
    from llavakit.processing.images import load_image
    from llavakit.serve.chat import bundled_image_path, check_video_model

    images = [Path(image) for image in args.image or []]
    video = Path(args.video) if args.video else None
    if args.model is None and not images and video is None:
        images = [bundled_image_path()]
    for image in images:
        load_image(image)  # a missing or broken image fails before the model loads
    if video is not None:
        if not video.exists():
            raise FileNotFoundError(f"--video {video} does not exist (give a video file or a folder of frames)")
        check_video_model(args.model)
    return images, video


def _chat(args: argparse.Namespace) -> int:
    from llavakit.serve.chat import ChatSession, load_chat_model

    if args.max_new_tokens < 1 or args.temperature < 0:
        raise ValueError(
            f"--max-new-tokens must be at least 1 and --temperature at least 0, "
            f"got {args.max_new_tokens} and {args.temperature}"
        )
    images, video = _chat_media(args)
    model, processor = load_chat_model(args.model, **_load_options(args))
    if args.model is None:
        print("No --model given: using a tiny random model built offline (its answers are noise).", file=sys.stderr)
    session = ChatSession(
        model, processor, images, max_new_tokens=args.max_new_tokens, temperature=args.temperature, video=video
    )
    if args.question:
        for question in args.question:
            print(f"USER: {question}")
            print(f"ASSISTANT: {session.ask(question)}")
        return 0
    about = ", ".join(str(path) for path in [*images, *([video] if video else [])]) or "nothing (text only)"
    print(f"Chatting about {about}. Empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            question = input("USER: ")
        except EOFError:
            return 0
        if not question.strip():
            return 0
        print("ASSISTANT: ", end="", flush=True)
        session.ask(question, stream=True)


def _demo(args: argparse.Namespace) -> int:
    from llavakit.demo.pipeline import run_demo
    from llavakit.demo.settings import preset

    settings = preset(args.size)
    if args.seed is not None:
        settings = settings.replace(seed=args.seed)
    run_demo(args.output, settings, overwrite=args.overwrite)
    return 0


def _import(args: argparse.Namespace) -> int:
    from llavakit.interop.folders import import_checkpoint

    result = import_checkpoint(
        args.source,
        args.output,
        template=args.template,
        vision_tower=args.vision_tower,
        overwrite=args.overwrite,
        base=args.base,
    )
    print(f"imported {result.source_layout}")
    print(result.template_line())
    print(f"wrote llavakit checkpoint to {args.output}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from llavakit.interop.folders import export_checkpoint

    export_checkpoint(args.checkpoint, args.output, overwrite=args.overwrite)
    print(
        "wrote transformers checkpoint (Llava, LlavaNext or LlavaOnevision, by the model's image mode) "
        f"to {args.output}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Three forms: `eval score ...` (an answers file), `eval CKPT --task T --data ...` (a benchmark's
    published files), `eval CKPT FILES...` (llavakit question files)."""
    if args.model == "score":
        return _eval_score(args)
    if args.data is not None:
        return _eval_benchmark(args)
    return _eval_question_files(args)


def _eval_question_files(args: argparse.Namespace) -> int:
    from llavakit.errors import ConfigError
    from llavakit.eval.runner import DEFAULT_MAX_NEW_TOKENS, evaluate_main

    if args.model is None or not args.files:
        from llavakit.eval.benchmarks import BENCHMARKS

        if args.task in BENCHMARKS:
            raise ConfigError(
                f"--task {args.task}: give the benchmark's files with --data ({BENCHMARKS[args.task].data_help})"
            )
        raise ConfigError("give a checkpoint and question files (eval CKPT FILES...), or --task NAME --data PATH")
    _refuse_options(args, ("predictions", "limit"), "question files")
    _refuse_judge_options(args, "question files")
    return evaluate_main(
        args.model,
        args.files,
        image_folder=args.image_folder,
        output=args.output,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS,
        task=args.task,
        on_bad_image="skip" if args.skip_bad_images else "error",
        overwrite=args.overwrite,
        **_load_options(args),
    )


def _eval_benchmark(args: argparse.Namespace) -> int:
    from llavakit.errors import ConfigError
    from llavakit.eval.benchmark_main import benchmark_main

    if args.model is None or args.files:
        raise ConfigError("the benchmark form is `eval CKPT --task NAME --data PATH...`: no question files with --data")
    _refuse_options(args, ("predictions",), "a checkpoint run (use `eval score` for an answers file)")
    with _eval_judge(args) as judge:
        return benchmark_main(
            args.model,
            _benchmark_task(args),
            args.data,
            image_folder=args.image_folder,
            output=args.output,
            overwrite=args.overwrite,
            limit=args.limit,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            skip_bad_images=args.skip_bad_images,
            judge=judge,
            **_load_options(args),
        )


def _eval_score(args: argparse.Namespace) -> int:
    from llavakit.errors import ConfigError
    from llavakit.eval.benchmark_main import score_main

    if args.files or args.data is None or args.predictions is None:
        raise ConfigError("the score form is `eval score --task NAME --data PATH... --predictions ANSWERS.jsonl`")
    loading = [name for name in ("device", "dtype", "device_map", "max_new_tokens") if getattr(args, name) is not None]
    if loading or args.load_in_4bit or args.load_in_8bit or args.overwrite or args.skip_bad_images:
        raise ConfigError(
            "`eval score` loads no model and writes no answers: leave out the loading options, --max-new-tokens, "
            "--overwrite and --skip-bad-images"
        )
    with _eval_judge(args) as judge:
        return score_main(
            _benchmark_task(args),
            args.data,
            args.predictions,
            image_folder=args.image_folder,
            output=args.output,
            limit=args.limit,
            judge=judge,
        )


def _benchmark_task(args: argparse.Namespace) -> str:
    from llavakit.errors import ConfigError
    from llavakit.eval.benchmarks import BENCHMARKS, get_benchmark

    if args.task is None:
        raise ConfigError(f"--task is needed with --data: one of {', '.join(BENCHMARKS)}")
    return get_benchmark(args.task).name


def _refuse_options(args: argparse.Namespace, names: tuple[str, ...], form: str) -> None:
    from llavakit.errors import ConfigError

    given = ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: not for {form}")


def _refuse_judge_options(args: argparse.Namespace, form: str) -> None:
    _refuse_options(args, tuple(name for name in vars(args) if name.startswith("judge_")), form)


@contextmanager
def _eval_judge(args: argparse.Namespace) -> Iterator[Any]:
    """The LLM judge for llava_bench / mm_vet: `llavakit.synthetic.teacher`'s client (retries, deadline,
    cache) behind the judge's `ask` function; None when no --judge-model is given."""
    if args.judge_model is None:
        _refuse_judge_options(args, "a run without --judge-model")
        yield None
        return
    from llavakit.errors import ConfigError
    from llavakit.eval.benchmarks import get_benchmark
    from llavakit.eval.judge import Judge
    from llavakit.synthetic.teacher import ChatClient, LLMConfig, ResponseCache

    benchmark = get_benchmark(_benchmark_task(args))
    if not benchmark.judged:
        raise ConfigError(f"--judge-*: {benchmark.name} is scored without a judge (judged tasks: llava_bench, mm_vet)")
    temperature = args.judge_temperature if args.judge_temperature is not None else benchmark.judge_temperature
    config = LLMConfig(
        model=args.judge_model,
        base_url=args.judge_base_url,
        api_key_env=args.judge_api_key_env or "OPENAI_API_KEY",
        temperature=temperature,
        max_tokens=1024,
        timeout=args.judge_timeout or 120.0,
        max_attempts=args.judge_max_attempts or 5,
        base_delay=args.judge_base_delay if args.judge_base_delay is not None else 1.0,
        max_concurrency=args.judge_max_concurrency or 4,
    )
    cache_dir = args.judge_cache_dir or (str(Path(args.output) / "judge_cache") if args.output else None)
    try:
        client = ChatClient(config, ResponseCache(cache_dir) if cache_dir else None)
    except ImportError as error:
        raise ConfigError(str(error)) from error
    try:
        yield Judge(
            _judge_ask(client),
            config.model,
            config.max_concurrency,
            args.judge_prompt_price,
            args.judge_completion_price,
        )
    finally:
        client.close()


def _judge_ask(client: Any) -> Any:
    """`ChatClient.complete` as the judge's `ask`: failed requests become `JudgeRequestError`, a refused key,
    URL or model (HTTP 401/403/404) a one-line error."""
    from llavakit.errors import ConfigError
    from llavakit.eval.judge import JudgeReply, JudgeRequestError
    from llavakit.synthetic.teacher import RequestFailed

    def ask(messages: list[dict[str, str]]) -> JudgeReply:
        try:
            reply, usage = client.complete(messages)
        except RequestFailed as error:
            raise JudgeRequestError(str(error)) from error
        except RuntimeError as error:
            raise ConfigError(str(error)) from error
        return JudgeReply(
            reply.content,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.requests,
            usage.retries,
            usage.cache_hits,
            reply.finish_reason == "length",
        )

    return ask


def _data_synth(args: argparse.Namespace) -> int:
    from llavakit.output_paths import prepare_output_dir
    from llavakit.synthetic.instruct import write_instruct_files
    from llavakit.synthetic.world import check_split, write_world

    check_split(args.n, args.test_fraction)  # before the folder is touched
    prepare_output_dir(args.output, args.overwrite, "synth output folder")
    manifest = write_world(args.output, n=args.n, seed=args.seed, test_fraction=args.test_fraction)
    files = write_instruct_files(manifest.root, seed=args.seed)
    print(f"wrote {args.n} scenes to {manifest.root}")
    for name, path in files.items():
        print(f"  {name}: {path}")
    return 0


# `data instruct` options read only by the openai backend; None (unset) leaves generate_main's default.
_TEACHER_OPTIONS = (
    "base_url",
    "model",
    "api_key_env",
    "kinds",
    "limit",
    "max_concurrency",
    "temperature",
    "max_tokens",
    "prompt_price",
    "completion_price",
    "max_attempts",
    "base_delay",
    "timeout",
    "cache_dir",
    "refresh",
)


def _data_instruct(args: argparse.Namespace) -> int:
    from llavakit.errors import ConfigError

    teacher = {
        name: getattr(args, name)
        for name in _TEACHER_OPTIONS
        if getattr(args, name) is not None and getattr(args, name) is not False
    }
    if args.source == "coco":
        return _data_instruct_coco(args, teacher)
    if args.captions or args.instances or args.image_prefix:
        raise ConfigError("--captions, --instances, --image-prefix: only for --source coco")
    if not args.world:
        raise ConfigError("give the world folder written by `llavakit data synth` (or --source coco)")
    if args.backend == "offline":
        if teacher:
            flags = ", ".join("--" + name.replace("_", "-") for name in teacher)
            raise ConfigError(f"{flags}: only for --backend openai")
        from llavakit.synthetic.instruct import write_instruct_files

        files = write_instruct_files(args.world, args.output, seed=args.seed, overwrite=args.overwrite)
        for name, path in files.items():
            print(f"{name}: {path}")
        return 0
    if args.overwrite:
        raise ConfigError("--overwrite: only for --backend offline (the openai backend appends and resumes)")
    from llavakit.synthetic.teacher import generate_main

    return _call_teacher(
        lambda options: generate_main(
            args.world,
            args.output,
            options.pop("kinds", []),
            options.pop("limit", None),
            args.seed,
            options.pop("base_url", None),
            options.pop("model", None),
            **options,
        ),
        teacher,
    )


def _call_teacher(generate: Callable[[dict[str, Any]], int], teacher: dict[str, Any]) -> int:
    """Run a teacher-backed generator on the command's teacher options; an endpoint's refusal is one line."""
    if teacher.get("max_tokens") == 0:
        teacher["max_tokens"] = None  # no limit sent
    try:
        return generate(teacher)
    except (ImportError, RuntimeError) as error:  # no SDK; the endpoint refused the key, URL or model
        print(f"llavakit data instruct: error: {error}", file=sys.stderr)
        return 2


def _data_instruct_coco(args: argparse.Namespace, teacher: dict) -> int:
    from llavakit.errors import ConfigError

    if args.backend != "openai":
        raise ConfigError("--source coco needs an LLM teacher: --backend openai")
    if not args.captions:
        raise ConfigError("--source coco needs --captions (e.g. captions_train2017.json)")
    if args.world or args.overwrite:
        raise ConfigError("--source coco takes no world folder and no --overwrite (it appends and resumes)")
    from llavakit.synthetic.coco import generate_coco_main

    return _call_teacher(
        lambda options: generate_coco_main(
            args.captions,
            args.instances,
            args.output,
            options.pop("kinds", []),
            options.pop("limit", None),
            args.seed,
            options.pop("base_url", None),
            options.pop("model", None),
            args.image_prefix or "",
            **options,
        ),
        teacher,
    )


def _data_check(args: argparse.Namespace) -> int:
    from llavakit.data.check import check_data, load_processor
    from llavakit.data.records import DatasetSpec
    from llavakit.errors import ConfigError

    if args.max_length is not None and not args.processor:
        raise ConfigError("--max-length needs --processor: lengths are counted in the processor's tokens")
    if args.max_length is not None and args.max_length < 1:
        raise ConfigError(f"--max-length must be at least 1, got {args.max_length}")
    processor = load_processor(args.processor) if args.processor else None
    specs = [
        DatasetSpec(
            path,
            image_folder=args.image_folder,
            allow_outside_paths=args.allow_outside_paths,
            source=args.source,
            columns=_data_columns(args.column),
        )
        for path in args.data
    ]
    report = check_data(specs, processor, args.max_length)
    print(report.render())
    return 1 if report.num_bad else 0


def _data_columns(pairs: list[str] | None) -> dict[str, str] | None:
    """`--column FIELD=COLUMN` options as the hf source's column mapping."""
    from llavakit.errors import ConfigError

    if not pairs:
        return None
    bad = [pair for pair in pairs if "=" not in pair or not all(pair.split("=", 1))]
    if bad:
        raise ConfigError(f"--column takes FIELD=COLUMN (e.g. conversations=messages), got {', '.join(bad)}")
    return dict(pair.split("=", 1) for pair in pairs)


def _data_convert(args: argparse.Namespace) -> int:
    from llavakit.data.convert import convert_dataset
    from llavakit.data.records import DatasetSpec
    from llavakit.errors import ConfigError
    from llavakit.output_paths import check_output_dir, prepare_output_dir

    if args.per_file < 1:
        raise ConfigError(f"--per-file must be at least 1, got {args.per_file}")
    spec = DatasetSpec(args.src, image_folder=args.image_folder, source=args.source, columns=_data_columns(args.column))
    inputs = [("the source", args.src)] + ([("the image folder", args.image_folder)] if args.image_folder else [])
    check_output_dir(args.out, args.overwrite, inputs)  # before anything is read or written
    out = prepare_output_dir(args.out, args.overwrite, "convert output folder")
    summary = convert_dataset(spec, out, args.format, args.per_file)
    for line in summary.lines():
        print(line)
    return 1 if summary.skipped or summary.missing_images else 0


def _train(args: argparse.Namespace) -> int:
    from llavakit.train.run import train_main

    overrides = [*args.overrides, "output.overwrite=true"] if args.overwrite else args.overrides
    return train_main(args.config, overrides)


def _add_chat(commands: argparse._SubParsersAction) -> None:
    """`llavakit chat`: ask a model about images, a video, or nothing."""
    chat = commands.add_parser(
        "chat",
        help="ask a model about images, a video, or nothing (text only)",
        description="Without --image and --video, a --model checkpoint chats text only; the tiny random model "
        "(no --model) looks at a bundled picture. Several --image make one multi-image question (one <image> "
        "per image, in order, in the first turn).",
    )
    chat.add_argument("--model", help="local llavakit checkpoint folder (default: a tiny random model)")
    chat.add_argument(
        "--image",
        action="append",
        help="image file; repeat for a multi-image question (default: none with --model, else a bundled picture)",
    )
    chat.add_argument("--video", help="video file or folder of frames (needs a model with a video token)")
    chat.add_argument("--question", "-q", action="append", help="ask and exit; repeat for several turns")
    chat.add_argument("--max-new-tokens", type=int, default=64)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    add_loading_options(chat)
    chat.set_defaults(run=_chat)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    """`llavakit demo`: the whole recipe on the synthetic world."""
    demo = commands.add_parser(
        "demo",
        help="the whole recipe on the synthetic world: pretrain, stage 1, stage 2, evaluate, answer",
        description="Generates a synthetic world of shapes, pretrains a tiny vision tower and language model on it, "
        "runs LLaVA's two training stages, evaluates on held-out images against chance, saves loss curves "
        "and answers a question. Offline; about 8 to 9 minutes on 2 CPU cores, more on slower ones "
        "(--size quick: 2 to 3; --size hd, LLaVA-1.5-HD's high-resolution crops, which also read the word: "
        "about 15).",
    )
    demo.add_argument("--size", choices=tuple(PRESETS), default="full")
    demo.add_argument("--output", default="runs/demo", help="folder for every artefact (default: runs/demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output")
    demo.add_argument("--seed", type=int, help="world and training seed (default: the preset's)")
    demo.set_defaults(run=_demo)


def _add_import(commands: argparse._SubParsersAction) -> None:
    """`llavakit import`: a transformers or original LLaVA / LLaVA-NeXT folder -> a llavakit checkpoint."""
    importer = commands.add_parser(
        "import",
        help="transformers Llava / LlavaNext / LlavaOnevision, original LLaVA / LLaVA-NeXT / OneVision folder, "
        "or an original LoRA output folder -> llavakit checkpoint",
    )
    importer.add_argument("source", help="local folder (download a hub model first: hf download NAME --local-dir DIR)")
    importer.add_argument("output", help="new or empty folder for the llavakit checkpoint")
    importer.add_argument("--overwrite", action="store_true", help="empty a non-empty output folder and write there")
    importer.add_argument("--template", help="conversation template (default: chosen from the language model)")
    importer.add_argument(
        "--vision-tower",
        help="original LLaVA / LLaVA-NeXT / OneVision: local folder of the vision tower named in mm_vision_tower",
    )
    importer.add_argument(
        "--base",
        help="original LoRA output (adapter_config.json + non_lora_trainables.bin): local folder of the base "
        "language model (default: adapter_config.json's base_model_name_or_path)",
    )
    importer.set_defaults(run=_import)


def _add_export(commands: argparse._SubParsersAction) -> None:
    """`llavakit export`: a llavakit checkpoint -> a transformers-native folder."""
    exporter = commands.add_parser(
        "export",
        help="llavakit checkpoint -> transformers Llava (fixed), LlavaNext (anyres, hd) "
        "or LlavaOnevision (anyres_max_N) folder",
    )
    exporter.add_argument("checkpoint", help="local llavakit checkpoint folder")
    exporter.add_argument("output", help="new or empty folder for the transformers checkpoint")
    exporter.add_argument("--overwrite", action="store_true", help="empty a non-empty output folder and write there")
    exporter.set_defaults(run=_export)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    """`llavakit eval`: a benchmark from its published files, an answers file, or llavakit question files."""
    evaluation = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on a benchmark (VQAv2, GQA, POPE, MMBench, MME, ...) or question files",
        description="Three forms. (1) eval CKPT --task NAME --data PATH...: a benchmark read from the files its "
        "authors publish, prompted and scored as LLaVA-1.5 evaluates it (tasks: vqav2, vizwiz, gqa, textvqa, pope, "
        "scienceqa, mmbench, seed, mme, llava_bench, mm_vet; docs/evaluation.md). With --output the answers are "
        "kept in LLaVA's answer format and a rerun resumes; under torchrun or accelerate launch the processes share "
        "the questions and rank 0 merges and scores. (2) eval score --task NAME --data PATH... --predictions "
        "FILE: score an answers file made elsewhere (the word score comes first; a checkpoint folder called score "
        "is written ./score). (3) eval CKPT FILES...: llavakit's own question files (.jsonl), e.g. the synthetic "
        "world's.",
    )
    evaluation.add_argument("model", nargs="?", help="local llavakit checkpoint folder, or the word score")
    evaluation.add_argument("files", nargs="*", help="question files (.jsonl / .json), e.g. eval_vqa.jsonl")
    evaluation.add_argument(
        "--task",
        help="benchmark with --data; with question files the scoring: vqa, exact, "
        "counting, pope (default: by file name)",
    )
    evaluation.add_argument("--data", nargs="+", help="the benchmark's published files or folder (see --task)")
    evaluation.add_argument("--predictions", help="eval score: the answers file (LLaVA's answer format, JSONL)")
    evaluation.add_argument("--image-folder", help="root of the image paths (default: next to the data)")
    evaluation.add_argument("--limit", type=int, help="only the first N questions of the benchmark")
    evaluation.add_argument(
        "--output",
        help="benchmarks: folder for <task>_answers.jsonl (resumed when rerun), results, submission; question "
        "files: new or empty folder for predictions_<set>.jsonl, results.json and results.md",
    )
    evaluation.add_argument(
        "--overwrite", action="store_true", help="replace earlier results (benchmarks: this task's files only)"
    )
    evaluation.add_argument("--batch-size", type=int, default=8)
    evaluation.add_argument(
        "--max-new-tokens", type=int, help="default: 128, 1024 for llava_bench and mm_vet (open-ended answers)"
    )
    evaluation.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out questions whose image is missing or broken (counted and reported) instead of stopping",
    )
    judge = evaluation.add_argument_group("LLM judge (llava_bench, mm_vet): any OpenAI-compatible endpoint")
    judge.add_argument("--judge-model", help="model name the endpoint serves, e.g. gpt-4o-mini")
    judge.add_argument(
        "--judge-base-url", help="e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, else OpenAI)"
    )
    judge.add_argument("--judge-api-key-env", help="environment variable holding the key (default: OPENAI_API_KEY)")
    judge.add_argument("--judge-temperature", type=float, help="default: 0.2 for llava_bench, 0 for mm_vet")
    judge.add_argument("--judge-max-concurrency", type=int, help="requests in flight (default: 4)")
    judge.add_argument("--judge-max-attempts", type=int, help="HTTP attempts per request (default: 5)")
    judge.add_argument(
        "--judge-base-delay", type=float, help="first retry delay in seconds, doubled each time (default: 1)"
    )
    judge.add_argument("--judge-timeout", type=float, help="seconds per request (default: 120)")
    judge.add_argument("--judge-prompt-price", type=float, help="price per million prompt tokens, for the cost line")
    judge.add_argument("--judge-completion-price", type=float, help="price per million completion tokens")
    judge.add_argument("--judge-cache-dir", help="request cache (default: judge_cache/ in --output)")
    add_loading_options(evaluation)
    evaluation.set_defaults(run=_eval)


def _add_train(commands: argparse._SubParsersAction) -> None:
    """`llavakit train`: one training stage from a YAML recipe."""
    train = commands.add_parser(
        "train",
        help="train one stage from a YAML recipe, e.g. configs/llava-1.5/pretrain-7b.yaml",
        description="Runs transformers' Trainer (DDP, DeepSpeed or FSDP when launched with torchrun / deepspeed) "
        "on a YAML recipe. Overrides are dotted key=value pairs whose values are read as YAML, e.g. "
        "optimization.lr=2e-5 data.packing=true output.resume=true.",
    )
    train.add_argument("config", help="YAML recipe (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run in output.dir (its files are removed first); "
        "without it a non-empty output.dir is refused unless output.resume=true continues it",
    )
    train.set_defaults(run=_train)


def _add_data(commands: argparse._SubParsersAction) -> None:
    """`llavakit data`: make and check LLaVA-format data."""
    data = commands.add_parser("data", help="make and check LLaVA-format data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    for add in (_add_data_synth, _add_data_instruct, _add_data_check, _add_data_convert):
        add(data_commands)


def _add_data_synth(data_commands: argparse._SubParsersAction) -> None:
    """`llavakit data synth`: the synthetic world."""
    synth = data_commands.add_parser("synth", help="generate the synthetic shape world and its instruction data")
    synth.add_argument("output")
    synth.add_argument("--n", type=int, default=1000, help="number of images")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of scenes held out for evaluation, in (0, 1)"
    )
    synth.add_argument("--overwrite", action="store_true", help="empty a non-empty output folder and write there")
    synth.set_defaults(run=_data_synth)


def _add_data_instruct(data_commands: argparse._SubParsersAction) -> None:
    """`llavakit data instruct`: instruction data, offline or from an LLM teacher."""
    instruct = data_commands.add_parser(
        "instruct",
        help="instruction data from a synthetic world (offline templates, or an LLM teacher) or COCO annotations",
        description="--backend offline (default) writes pretrain.json, instruct.json and eval_*.jsonl from "
        "templates. --backend openai asks any OpenAI-compatible chat endpoint for LLaVA's conversation, "
        "detail and reasoning samples and appends them to instruct_llm.jsonl (cached, resumable). "
        "--source coco --captions ... --instances ... does the same from COCO captions and boxes into "
        "instruct_coco.jsonl; see docs/instruct.md.",
    )
    instruct.add_argument("world", nargs="?", help="folder written by `llavakit data synth` (--source synth)")
    instruct.add_argument("--output", help="default: the world folder (coco: the captions file's folder)")
    instruct.add_argument(
        "--source", choices=("synth", "coco"), default="synth", help="coco: LLaVA's recipe on COCO annotations"
    )
    coco = instruct.add_argument_group("--source coco")
    coco.add_argument("--captions", help="COCO captions file, e.g. captions_train2017.json")
    coco.add_argument("--instances", help="COCO instances file (boxes), e.g. instances_train2017.json")
    coco.add_argument("--image-prefix", help="put before each file name in the samples, e.g. coco/train2017/")
    instruct.add_argument(
        "--overwrite", action="store_true", help="offline: replace pretrain.json, instruct.json, eval_*.jsonl there"
    )
    instruct.add_argument("--seed", type=int, default=0)
    instruct.add_argument("--backend", choices=("offline", "openai"), default="offline")
    teacher = instruct.add_argument_group("openai backend")
    teacher.add_argument(
        "--base-url", help="endpoint, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, else OpenAI's API)"
    )
    teacher.add_argument("--model", help="model name the endpoint serves (default: $OPENAI_MODEL)")
    teacher.add_argument("--api-key-env", help="environment variable holding the key (default: OPENAI_API_KEY)")
    teacher.add_argument("--kinds", nargs="+", help="conversation, detail, reasoning (default: all three)")
    teacher.add_argument("--limit", type=int, help="only the first N training scenes")
    teacher.add_argument("--max-concurrency", type=int, help="requests in flight (default: 4)")
    teacher.add_argument("--temperature", type=float, help="default: the endpoint's")
    teacher.add_argument("--max-tokens", type=int, help="per reply (default: 1024; 0 sends no limit)")
    teacher.add_argument("--prompt-price", type=float, help="price per million prompt tokens, for the cost line")
    teacher.add_argument("--completion-price", type=float, help="price per million completion tokens")
    teacher.add_argument("--max-attempts", type=int, help="HTTP attempts per request (default: 5)")
    teacher.add_argument(
        "--base-delay", type=float, help="first backoff delay in seconds, doubled each retry (default: 1)"
    )
    teacher.add_argument("--timeout", type=float, help="seconds per request (default: 120)")
    teacher.add_argument("--cache-dir", help="request cache (default: llm_cache/ next to the output)")
    teacher.add_argument(
        "--refresh",
        action="store_true",
        help="ask again for cached requests (e.g. unusable "
        "replies of failed samples); written samples are skipped anyway",
    )
    instruct.set_defaults(run=_data_instruct)


def _add_data_check(data_commands: argparse._SubParsersAction) -> None:
    """`llavakit data check`: counts and bad samples of a dataset."""
    check = data_commands.add_parser("check", help="count samples, images, tokens; list every bad sample")
    check.add_argument(
        "data", nargs="+", help="LLaVA-format .json/.jsonl files, parquet/arrow folders (hf) or tar shards"
    )
    check.add_argument("--source", choices=("llava", "hf", "shards"), help="default: by path (docs/data.md)")
    check.add_argument(
        "--column",
        action="append",
        metavar="FIELD=COLUMN",
        help="hf source: LLaVA field = column, e.g. conversations=messages (repeat for each field)",
    )
    check.add_argument("--image-folder", help="root of the image paths (default: each file's folder)")
    check.add_argument("--processor", help="processor or checkpoint folder: enables token counts and length checks")
    check.add_argument("--max-length", type=int, default=None, help="longest sample in tokens (needs --processor)")
    check.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="accept absolute image paths and paths with '..' (default: such a sample is bad, unsafe path)",
    )
    check.set_defaults(run=_data_check)


def _add_data_convert(data_commands: argparse._SubParsersAction) -> None:
    """`llavakit data convert`: a dataset between LLaVA JSON + folder, parquet and tar shards."""
    convert = data_commands.add_parser(
        "convert",
        help="convert a dataset between LLaVA JSON + image folder, parquet and tar shards",
        description="Reads SRC as training would (source by path, or --source) and writes it to the folder OUT "
        "with its records and image bytes unchanged; see docs/data.md.",
    )
    convert.add_argument("src", help="a .json/.jsonl file, a parquet/arrow folder, a .tar shard or a folder of them")
    convert.add_argument("out", help="output folder (must be empty unless --overwrite)")
    convert.add_argument("--format", choices=("llava", "parquet", "shards"), required=True)
    convert.add_argument("--source", choices=("llava", "hf", "shards"), help="SRC's source (default: by path)")
    convert.add_argument("--image-folder", help="root of SRC's image paths (default: SRC's folder)")
    convert.add_argument(
        "--column",
        action="append",
        metavar="FIELD=COLUMN",
        help="hf source: LLaVA field = column, e.g. conversations=messages (repeat for each field)",
    )
    convert.add_argument("--per-file", type=int, default=1000, help="samples per parquet file or tar shard")
    convert.add_argument("--overwrite", action="store_true", help="empty a non-empty OUT and write there")
    convert.set_defaults(run=_data_convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llavakit", description="Build, train, evaluate and serve LLaVA models.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also: LLAVAKIT_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_chat,
        _add_demo,
        _add_import,
        _add_export,
        _add_eval,
        _add_train,
        _add_data,
        add_serve_parser,
        add_ablate_parser,
    ):
        add(commands)
    return parser


# Mistakes in the user's input or setup: printed as one line naming the culprit, exit status 2.
USER_ERRORS = (LlavaKitError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


def _debug(args: argparse.Namespace) -> bool:
    return bool(args.debug) or os.environ.get("LLAVAKIT_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        if _debug(args):
            raise
        print(f"llavakit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if _debug(args):
            raise
        print(f"llavakit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
