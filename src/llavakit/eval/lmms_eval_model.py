"""llavakit checkpoints as an lmms-eval model, so lmms-eval's tasks run on them.

    pip install 'llavakit[lmms-eval]'
    lmms-eval --model llavakit --model_args pretrained=runs/llava-7b,dtype=bfloat16 --tasks pope,mme \\
        --batch_size 16 --device cuda --output_path runs/lmms
    accelerate launch --num_processes 8 -m lmms_eval --model llavakit --model_args pretrained=runs/llava-7b ...

lmms-eval finds the model through the `lmms_eval.models` entry point, which names `manifest`; in
Python, `register()` does the same for the running process. This is the only llavakit module that
imports lmms_eval (an optional extra).

`generate_until` asks each request as LLaVA-1.5's evaluation does and as `llavakit eval` does: one
user turn in the checkpoint's own conversation template, `<image>\\n` before the text (one per
image, unless the task's text already places them), and greedy decoding through the batched,
left-padded runner of `llavakit.eval.runner`, so a task's answers equal `llavakit eval`'s for the
same prompt. A task that asks for sampling (temperature > 0) or beam search gets it; `until` cuts
each answer at the first stop string. `loglikelihood` (lmms-eval's multiple-choice tasks) scores
the continuation after the same prompt, laid out as the template lays out an answer. Images
only: a task whose visuals are videos or audio is refused naming the task and document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

from llavakit.errors import ConfigError, DataError
from llavakit.eval.parallel import Ranks, check_parallel_placement, rank_device
from llavakit.eval.runner import generate_answers
from llavakit.loading_options import quantization_mode

MODEL_NAME = "llavakit"
# lmms-eval's own models answer up to this many tokens when a task names no limit.
DEFAULT_MAX_NEW_TOKENS = 1024


def manifest() -> Any:
    """lmms-eval's registration of `LlavaKitLmms` under the name `llavakit` (the entry point's target)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.LlavaKitLmms")


def register() -> None:
    """Make `llavakit` known to lmms-eval's model registry in this process, as the installed entry point does."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)


@dataclass(frozen=True)
class Decoding:
    """One request's generation settings, from the task's `generation_kwargs` (lmms-eval's names)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    until: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 and self.num_beams == 1

    @classmethod
    def from_task(cls, kwargs: Mapping[str, Any], default_max_new_tokens: int) -> Decoding:
        """The settings a task asks for; temperature 0 (lmms-eval's default) is greedy, as its models read it."""
        until = kwargs.get("until") or ()
        if isinstance(until, str):
            until = (until,)
        return cls(
            max_new_tokens=int(kwargs.get("max_new_tokens") or default_max_new_tokens),
            temperature=float(kwargs.get("temperature") or 0.0),
            top_p=kwargs.get("top_p"),
            num_beams=int(kwargs.get("num_beams") or 1),
            until=tuple(stop for stop in until if stop),
        )


def cut_at_stops(text: str, stops: Iterable[str]) -> str:
    """The answer up to the first of the task's stop strings."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def launch_ranks() -> Ranks:
    """This process's place in a run the launcher started (lmms-eval joins the processes itself)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or "1")
    rank = int(os.environ.get("RANK", "0") or "0")
    return Ranks(rank, world, int(os.environ.get("LOCAL_RANK", rank) or rank))


def default_device(device: str | None, device_map: str | None, quantization: str | None) -> str | None:
    """As lmms-eval's own models: a CUDA GPU when there is one and nothing else places the model, else the CPU."""
    if device is not None or device_map is not None or quantization is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _batch_size(value: int | str) -> int:
    """lmms-eval's `--batch_size` (a string on its command line) as a positive integer."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size must be a whole number for llavakit, got {value!r} (no 'auto')") from None
    if size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {size}")
    return size


class LlavaKitLmms(lmms):
    """A llavakit checkpoint behind lmms-eval's simple-model interface (images and text in, text out).

    `model_args`: `pretrained` (a llavakit checkpoint folder; import other formats with `llavakit
    import` first), `device` (default: `cuda` when there is a GPU, else `cpu`; under a launcher `cuda`
    means each process's own GPU),
    `dtype` (auto, bfloat16, float16, float32; default as `llavakit eval` chooses), `device_map`
    (one process only), `load_in_4bit` / `load_in_8bit`, `max_new_tokens` (when a task names none).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        device_map: str | None = None,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        max_batch_size: int | None = None,
    ) -> None:
        """Load the checkpoint as `llavakit eval` does. `max_batch_size` (lmms-eval's, for `auto`) is not used."""
        from llavakit.model.checkpoint import inference_dtype, load_checkpoint
        from llavakit.processing.processor import LlavaKitProcessor

        super().__init__()
        self.batch_size_per_gpu = _batch_size(batch_size)  # checked before the model loads
        ranks = launch_ranks()
        check_parallel_placement(device_map, ranks)
        self._rank, self._world_size = ranks.rank, ranks.world_size
        quantization = quantization_mode(load_in_4bit, load_in_8bit)
        place = rank_device(default_device(device, device_map, quantization), quantization, ranks)
        self._model, self._processor = load_checkpoint(
            pretrained,
            LlavaKitProcessor,
            place,
            inference_dtype(dtype, place, device_map, quantization),
            device_map=device_map,
            quantization=quantization,
        )
        self._model.eval()
        self.pretrained = str(pretrained)
        self.max_new_tokens = int(max_new_tokens)

    @property
    def model(self) -> Any:
        return self._model

    @property
    def processor(self) -> Any:
        return self._processor

    @property
    def tokenizer(self) -> Any:
        return self._processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self._model.device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---- requests ---------------------------------------------------------------------------

    def _visuals(self, doc_to_visual: Callable | None, doc_id: Any, task: str, split: str) -> list[Image.Image]:
        """The request's images, RGB; anything but images (video paths, audio) is refused naming the document."""
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = []
        for visual in visuals if isinstance(visuals, (list, tuple)) else [visuals]:
            if not isinstance(visual, Image.Image):
                raise DataError(
                    f"lmms-eval task {task!r} document {doc_id!r} gives a {type(visual).__name__} visual; "
                    "the llavakit model takes images only"
                )
            images.append(visual)
        from llavakit.processing.images import load_image

        return [load_image(image, name=f"{task} document {doc_id}") for image in images]

    def _user_text(self, context: str, images: Sequence[Image.Image]) -> str:
        """The user turn: `<image>\\n` per image first, unless the task's text places them itself."""
        token = self._processor.image_token
        return context if not images or token in context else f"{token}\n" * len(images) + context

    def _prompt(self, context: str, images: Sequence[Image.Image]) -> str:
        """The user turn in the checkpoint's template, ready for the answer."""
        turn = {"role": "user", "content": self._user_text(context, images)}
        return self._processor.apply_chat_template([turn], add_generation_prompt=True)

    def _batches(self, prompts: Sequence[str], settings: Sequence[Decoding]) -> list[list[int]]:
        """Request indices in batches of like settings, longest prompts first (less padding; memory errors early)."""
        order = sorted(range(len(prompts)), key=lambda i: (json.dumps(settings[i].__dict__), -len(prompts[i])))
        batches: list[list[int]] = []
        for index in order:
            last = batches[-1] if batches else None
            if last and len(last) < self.batch_size and settings[last[0]] == settings[index]:
                last.append(index)
            else:
                batches.append([index])
        return batches

    def generate_until(self, requests: Sequence[Instance]) -> list[str]:
        """Answers to `(context, generation_kwargs, doc_to_visual, doc_id, task, split)` requests, in order."""
        prompts, images, settings = [], [], []
        for request in requests:
            context, kwargs, doc_to_visual, doc_id, task, split = request.args
            images.append(self._visuals(doc_to_visual, doc_id, task, split))
            prompts.append(self._prompt(context, images[-1]))
            settings.append(Decoding.from_task(kwargs or {}, self.max_new_tokens))
        answers = [""] * len(requests)
        with tqdm(total=len(requests), disable=self.rank != 0, desc="llavakit answers") as bar:
            for batch in self._batches(prompts, settings):
                decoding = settings[batch[0]]
                texts = self._generate([prompts[i] for i in batch], [images[i] for i in batch], decoding)
                for index, text in zip(batch, texts):
                    answers[index] = cut_at_stops(text, decoding.until)
                    self.cache_hook.add_partial("generate_until", requests[index].args[:2], answers[index])
                bar.update(len(batch))
        return answers

    def _generate(self, prompts: list[str], images: list[list[Image.Image]], decoding: Decoding) -> list[str]:
        """Greedy: `llavakit eval`'s runner itself; sampling or beams: the same inputs with the task's settings."""
        if decoding.greedy:
            return generate_answers(self._model, self._processor, prompts, images, decoding.max_new_tokens)
        return self._sample(prompts, images, decoding)

    @torch.inference_mode()
    def _sample(self, prompts: list[str], images: list[list[Image.Image]], decoding: Decoding) -> list[str]:
        """Answers sampled (temperature > 0) or beam-searched, from left-padded inputs as the runner builds them."""
        inputs, width = self._left_padded_inputs(prompts, images)
        sampling = decoding.temperature > 0
        output = self._model.generate(
            **inputs,
            do_sample=sampling,
            temperature=decoding.temperature if sampling else None,
            top_p=decoding.top_p if sampling else None,
            num_beams=decoding.num_beams,
            max_new_tokens=decoding.max_new_tokens,
            eos_token_id=self._processor.stop_token_ids or None,
            pad_token_id=self._pad_id(),
            use_cache=True,
        )
        texts = self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        stop = self._processor.template.stop_token
        return [(text[: text.index(stop)] if stop and stop in text else text).strip() for text in texts]

    def _pad_id(self) -> int:
        tokenizer = self.tokenizer
        return next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    def _left_padded_inputs(self, prompts: list[str], images: list[list[Image.Image]]) -> tuple[dict[str, Any], int]:
        """The model's inputs for a batch, rows right-aligned (pads on the left), floats in the model's dtype."""
        encoded = self._processor(text=prompts, images=images, return_tensors=None, padding=False)
        rows = encoded["input_ids"]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            attention_mask[index, width - len(row) :] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs.update(
            (key, torch.as_tensor(np.asarray(value)))
            for key, value in encoded.items()
            if key not in ("input_ids", "attention_mask")
        )
        return {key: self._placed(value) for key, value in inputs.items()}, width

    def _placed(self, value: torch.Tensor) -> torch.Tensor:
        model = self._model
        return value.to(model.device, model.dtype) if value.is_floating_point() else value.to(model.device)

    # ---- log-likelihood ---------------------------------------------------------------------

    def _answer_text(self, prompt: str, context: str, images: Sequence[Image.Image], continuation: str) -> str:
        """The continuation as the template writes an answer after `prompt` (its separator included, end cut)."""
        turns = [
            {"role": "user", "content": self._user_text(context, images)},
            {"role": "assistant", "content": continuation},
        ]
        whole = self._processor.apply_chat_template(turns, add_generation_prompt=False)
        rest = whole[len(prompt) :] if whole.startswith(prompt) else ""
        if continuation and continuation in rest:
            return rest[: rest.index(continuation) + len(continuation)]
        return continuation

    @torch.inference_mode()
    def _loglikelihood(self, prompt: str, answer: str, images: list[Image.Image]) -> tuple[float, bool]:
        """Sum of the answer tokens' log-probabilities after the prompt, and whether greedy decoding picks them all."""
        count = len(self.tokenizer(prompt + answer)["input_ids"]) - len(self.tokenizer(prompt)["input_ids"])
        if count < 1:
            raise DataError(f"the continuation {answer!r} adds no tokens to the prompt")
        inputs, width = self._left_padded_inputs([prompt + answer], [images])
        logits = self._model(**inputs).logits[0, width - count - 1 : width - 1].float()
        targets = inputs["input_ids"][0, width - count :]
        scores = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).sum()
        return float(scores), bool((logits.argmax(dim=-1) == targets).all())

    def loglikelihood(self, requests: Sequence[Instance]) -> list[tuple[float, bool]]:
        """(log-probability, greedy?) of each `(context, continuation, doc_to_visual, doc_id, task, split)` request."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="llavakit log-likelihoods"):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            images = self._visuals(doc_to_visual, doc_id, task, split)
            prompt = self._prompt(context, images)
            answer = self._answer_text(prompt, context, images, continuation)
            results.append(self._loglikelihood(prompt, answer, images))
        return results

    def generate_until_multi_round(self, requests: Sequence[Instance]) -> list[str]:
        raise NotImplementedError(
            "llavakit's lmms-eval model answers single-turn tasks (generate_until, loglikelihood); "
            "multi-round tasks are not supported"
        )
