"""The `llavakit` command: one subcommand per job, each a thin shell over a library function.

Run `llavakit --help`. Heavy imports happen inside the subcommand, so help is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _chat(args: argparse.Namespace) -> int:
    from llavakit.serve.chat import ChatSession, bundled_image_path, load_chat_model

    model, processor = load_chat_model(args.model, device=args.device)
    if args.model is None:
        print("No --model given: using a tiny random model built offline (its answers are noise).", file=sys.stderr)
    image = Path(args.image) if args.image else bundled_image_path()
    session = ChatSession(model, processor, image, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    if args.question:
        for question in args.question:
            print(f"USER: {question}")
            print(f"ASSISTANT: {session.ask(question)}")
        return 0
    print(f"Chatting about {image}. Empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            question = input("USER: ")
        except EOFError:
            return 0
        if not question.strip():
            return 0
        print("ASSISTANT: ", end="", flush=True)
        session.ask(question, stream=True)


def _import(args: argparse.Namespace) -> int:
    from llavakit.interop import import_checkpoint

    import_checkpoint(args.source, args.output, template=args.template, vision_tower=args.vision_tower)
    print(f"wrote llavakit checkpoint to {args.output}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from llavakit.interop import export_checkpoint

    export_checkpoint(args.checkpoint, args.output)
    print(f"wrote transformers LlavaForConditionalGeneration to {args.output}")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from llavakit.data.instruct import write_instruct_files
    from llavakit.data.synth import write_world

    manifest = write_world(args.output, n=args.n, seed=args.seed, test_fraction=args.test_fraction)
    files = write_instruct_files(manifest.root, seed=args.seed)
    print(f"wrote {args.n} scenes to {manifest.root}")
    for name, path in files.items():
        print(f"  {name}: {path}")
    return 0


def _data_instruct(args: argparse.Namespace) -> int:
    from llavakit.data.instruct import write_instruct_files

    for name, path in write_instruct_files(args.world, args.output, seed=args.seed).items():
        print(f"{name}: {path}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from llavakit.data.dataset import DatasetSpec, check_data
    from llavakit.data.processor import LlavaKitProcessor

    processor = LlavaKitProcessor.from_pretrained(args.processor) if args.processor else None
    specs = [DatasetSpec(path, image_folder=args.image_folder) for path in args.data]
    report = check_data(specs, processor, args.max_length)
    print(report.render())
    return 1 if report.num_bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llavakit", description="Build, train, evaluate and serve LLaVA models.")
    commands = parser.add_subparsers(dest="command", required=True)

    chat = commands.add_parser("chat", help="ask a model about an image")
    chat.add_argument("--model", help="llavakit checkpoint folder (default: a tiny random model)")
    chat.add_argument("--image", help="image file (default: a bundled picture)")
    chat.add_argument("--question", "-q", action="append", help="ask and exit; repeat for several turns")
    chat.add_argument("--max-new-tokens", type=int, default=64)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument("--device", default="cpu")
    chat.set_defaults(run=_chat)

    importer = commands.add_parser("import", help="transformers Llava or original LLaVA folder -> llavakit checkpoint")
    importer.add_argument("source")
    importer.add_argument("output")
    importer.add_argument("--template", help="conversation template (default: chosen from the language model)")
    importer.add_argument("--vision-tower", help="original LLaVA: local folder of the vision tower named in mm_vision_tower")
    importer.set_defaults(run=_import)

    exporter = commands.add_parser("export", help="llavakit checkpoint -> transformers LlavaForConditionalGeneration folder")
    exporter.add_argument("checkpoint")
    exporter.add_argument("output")
    exporter.set_defaults(run=_export)
    data = commands.add_parser("data", help="make and check LLaVA-format data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="generate the synthetic shape world and its instruction data")
    synth.add_argument("output")
    synth.add_argument("--n", type=int, default=1000, help="number of images")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, default=0.2)
    synth.set_defaults(run=_data_synth)
    instruct = data_commands.add_parser("instruct", help="instruction and evaluation data from a synthetic world")
    instruct.add_argument("world", help="folder written by `llavakit data synth`")
    instruct.add_argument("--output", help="default: the world folder")
    instruct.add_argument("--seed", type=int, default=0)
    instruct.set_defaults(run=_data_instruct)
    check = data_commands.add_parser("check", help="count samples, images, tokens; list every bad sample")
    check.add_argument("data", nargs="+", help="LLaVA-format .json or .jsonl files")
    check.add_argument("--image-folder", help="root of the image paths (default: each file's folder)")
    check.add_argument("--processor", help="processor or checkpoint folder: enables token counts and length checks")
    check.add_argument("--max-length", type=int, default=None)
    check.set_defaults(run=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"llavakit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
