"""Continuous batching: one thread runs the model, and requests join and leave between decoding steps.

Each loop of the generation thread (1) admits waiting requests while the batch has room and
prefills them, left-padded together up to `max_prefill_tokens` (a lone request exactly as
`model.generate` prefills a prompt: images encoded, first token chosen), (2) runs one decoding
step for every running request together over the padded key/value batch
(`kv_batch.PaddedKVBatch`), and (3) lets finished or abandoned requests leave. Padding is
masked and positions count real tokens only, so a greedy answer has the tokens
`model.generate` gives for the same inputs, whatever else shares its steps (up to float
rounding in the padded sums). The wait for a batch slot is bounded (`max_queue`): past it,
`submit` raises `QueueFull` at once instead of letting latency grow without limit.

The thread talks to the web app through callbacks (`Submission.on_event`), called from the
thread; the app hops them onto its event loop. The model is touched by this thread only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from transformers import BatchFeature, DynamicCache, PreTrainedTokenizerBase

from llavakit.serve.answer_text import AnswerText
from llavakit.serve.kv_batch import PaddedKVBatch, stack_prompts
from llavakit.serve.metrics import ServerMetrics
from llavakit.serve.sampling import SamplingParams, TokenChooser, new_generator

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room in the wait for a batch slot; the client should retry later."""


@dataclass
class GenerationEvent:
    """New answer text; with `finish_reason` (`stop` / `length`) or `error`, the request's last event."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Submission:
    """A prepared request: model inputs for its prefill, how to generate, where events go."""

    inputs: BatchFeature
    prompt_tokens: int
    params: SamplingParams
    on_event: Callable[[GenerationEvent], None]
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    """A request in the running batch."""

    submission: Submission
    answer: AnswerText
    generator: torch.Generator | None
    last_token: int = 0
    generated: int = 0
    finished: bool = False


class BatchingEngine:
    """The generation thread and its bounded wait; `start` it, `submit` prepared requests, `close` it."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        stop_token_ids: list[int],
        metrics: ServerMetrics,
        max_batch_size: int = 32,
        max_queue: int = 64,
        max_prefill_tokens: int = 8192,
        pad_token_id: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer  # this thread's own copy: fast tokenizers are not safe to share while encoding
        self.stop_token_ids = set(stop_token_ids)
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.pad_token_id = pad_token_id
        suppressed = getattr(model.generation_config, "suppress_tokens", None) or []
        self.chooser = TokenChooser(suppressed)
        self._waiting: deque[Submission] = deque()
        self._rows: list[_Row] = []
        self._batch = PaddedKVBatch()
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # ---- the app's side ---------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    def has_room(self) -> bool:
        return len(self._waiting) < self.max_queue

    def submit(self, submission: Submission) -> None:
        """Queue a request for the next free batch slot; `QueueFull` when `max_queue` already wait."""
        with self._wake:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the limit is {self.max_queue})")
            self._waiting.append(submission)
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llavakit-generation", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the current step; requests still waiting or running get an error event."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the generation thread --------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while (admitted := self._admit()) is not None:
                for group in self._prefill_groups(admitted):
                    self._guarded(partial(self._prefill, group), group)
                self._guarded(self._step)
        for row in self._rows:
            self._emit(row.submission, GenerationEvent(error="the server is shutting down"))
        for submission in self._waiting:
            self._emit(submission, GenerationEvent(error="the server is shutting down"))

    def _guarded(self, work: Callable[[], None], group: Sequence[Submission] = ()) -> None:
        """Run `work`; an unexpected failure ends the running requests and `group` with an error event each,
        and the thread goes on with the next requests instead of dying silently."""
        try:
            work()
        except Exception:
            logger.exception("the generation thread failed; the running requests end with an error")
            for submission in [*(row.submission for row in self._rows), *group]:
                self._emit(submission, GenerationEvent(error="the server failed while generating"))
            self._rows, self._batch = [], PaddedKVBatch()

    def _admit(self) -> list[Submission] | None:
        """Wait for work; take waiting requests while the batch has room. None once closing."""
        with self._wake:
            while not self._closing and not self._waiting and not self._rows:
                self._wake.wait()
            if self._closing:
                return None
            admitted = []
            while self._waiting and len(self._rows) + len(admitted) < self.max_batch_size:
                admitted.append(self._waiting.popleft())
        return [submission for submission in admitted if not submission.cancelled.is_set()]

    def _prefill_groups(self, submissions: list[Submission]) -> list[list[Submission]]:
        """Consecutive requests whose padded prompts fit `max_prefill_tokens` together (one alone may pass it)."""
        groups: list[list[Submission]] = []
        width = 0
        for submission in submissions:
            wider = max(width, submission.prompt_tokens)
            if groups and wider * (len(groups[-1]) + 1) <= self.max_prefill_tokens:
                groups[-1].append(submission)
                width = wider
            else:
                groups.append([submission])
                width = submission.prompt_tokens
        return groups

    def _emit(self, submission: Submission, event: GenerationEvent) -> None:
        """Hand an event to the app; a client that went away is cancelled, never the thread."""
        try:
            submission.on_event(event)
        except Exception:  # the app's loop may be gone; the request is over either way
            submission.cancelled.set()

    def _prefill(self, group: list[Submission]) -> None:
        """Run prompts (one alone exactly as `generate` does, or several left-padded together), choose each
        one's first token, and let the unfinished ones join the running batch."""
        cache = DynamicCache()
        together = len(group) > 1
        try:
            inputs = stack_prompts([s.inputs for s in group], self.pad_token_id) if together else group[0].inputs
            logits = self.model(**inputs, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        except Exception:
            if together:  # one bad request must not fail the others: each again on its own
                for submission in group:
                    self._prefill([submission])
                return
            logger.exception("prefill failed")
            self._emit(group[0], GenerationEvent(error="the model failed on this request"))
            return
        now = time.perf_counter()
        rows = []
        for submission in group:
            self.metrics.first_token_after(now - submission.arrived)
            params = submission.params
            rows.append(_Row(submission, AnswerText(self.tokenizer, params.stop), new_generator(params, logits.device)))
        chosen = self.chooser.choose(logits, [row.submission.params for row in rows], [row.generator for row in rows])
        for row, token in zip(rows, chosen):
            self._advance(row, token)
        self._batch.add(cache, inputs["attention_mask"] if together else None)
        self._rows.extend(rows)
        self._leave([index for index, row in enumerate(self._rows) if not row.finished])

    def _step(self) -> None:
        """One decoding step for every running request, then the finished ones leave."""
        live = [index for index, row in enumerate(self._rows) if not row.submission.cancelled.is_set()]
        if len(live) < len(self._rows):
            self._leave(live)
        if not self._rows:
            return
        mask, positions = self._batch.step_inputs()
        tokens = torch.tensor([[row.last_token] for row in self._rows], device=mask.device)
        try:
            output = self.model(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=positions,
                cache=self._batch.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except Exception:
            logger.exception("decoding step failed")
            for row in self._rows:
                self._emit(row.submission, GenerationEvent(error="the model failed while generating"))
            self._leave([])
            return
        self._batch.stepped(mask)
        self.metrics.decoded(len(self._rows))
        params = [row.submission.params for row in self._rows]
        chosen = self.chooser.choose(output.logits[:, -1], params, [row.generator for row in self._rows])
        for row, token in zip(self._rows, chosen):
            self._advance(row, token)
        self._leave([index for index, row in enumerate(self._rows) if not row.finished])

    def _leave(self, kept: list[int]) -> None:
        """Keep only the rows at `kept` (nothing to do when every row stays)."""
        if len(kept) == len(self._rows):
            return
        self._rows = [self._rows[index] for index in kept]
        self._batch.keep(kept)

    def _advance(self, row: _Row, token: int) -> None:
        """Take a row's new token: send the text it makes certain, or finish the answer."""
        row.generated += 1
        row.last_token = token
        if token in self.stop_token_ids:
            self._finish(row, "stop")
            return
        piece = row.answer.add(token)
        if row.answer.stopped:
            self._finish(row, "stop", piece)
        elif row.generated >= row.submission.params.max_tokens:
            self._finish(row, "length", piece)
        elif piece:
            self._emit(row.submission, GenerationEvent(text=piece))

    def _finish(self, row: _Row, reason: str, piece: str = "") -> None:
        """The answer is complete: its last text, why it ended, and its token count."""
        row.finished = True
        submission = row.submission
        self.metrics.answered(submission.prompt_tokens, row.generated, time.perf_counter() - submission.arrived)
        text = piece + row.answer.finish()
        self._emit(submission, GenerationEvent(text=text, finish_reason=reason, completion_tokens=row.generated))
