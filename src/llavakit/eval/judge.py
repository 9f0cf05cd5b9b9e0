"""An LLM judge for open-ended benchmarks (LLaVA-Bench, MM-Vet) through any chat endpoint.

Why a backend function instead of a client: the judge only needs "send these messages, get the
reply and what it cost". `llavakit eval` passes one built on `llavakit.synthetic.teacher.ChatClient`
(OpenAI-compatible endpoints, bounded retries with backoff on 429/5xx and timeouts, an on-disk
cache keyed by the request, so a rerun of the same judgements is free and a run resumes where it
stopped); tests and other callers pass their own.

Each judgement is parsed by the benchmark (two 1-10 scores, or one 0-1 correctness); a reply
that does not parse is asked once more with the reason, and if it still does not parse the
question is reported as failed with its id and the reply, and left out of the metrics. Requests
run concurrently (`Judge.concurrency`). Usage (requests, retries, cache hits, tokens) is summed
and priced when prices are given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

Messages = list[dict[str, str]]


class JudgeRequestError(Exception):
    """A judge request that got no reply (retries spent, or an error retrying cannot fix)."""


@dataclass(frozen=True)
class JudgeReply:
    """What one request returned and cost (`cache_hits` 1: answered from the cache, nothing sent)."""

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 1
    retries: int = 0
    cache_hits: int = 0
    truncated: bool = False


AskJudge = Callable[[Messages], JudgeReply]


@dataclass(frozen=True)
class Judge:
    """A judge model: `ask` sends messages (raises JudgeRequestError when no reply comes), `model` names it."""

    ask: AskJudge
    model: str
    concurrency: int = 4
    prompt_price: float | None = None
    completion_price: float | None = None


@dataclass
class JudgeUsage:
    """Requests and tokens of a judging run, summed over its judgements."""

    judgements: int = 0
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, reply: JudgeReply) -> None:
        for name in ("requests", "retries", "cache_hits", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(reply, name))

    def merge(self, other: JudgeUsage) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def cost(self, judge: Judge) -> float | None:
        """Currency units for the tokens sent and received (prices per million tokens), None without prices."""
        if judge.prompt_price is None and judge.completion_price is None:
            return None
        paid = self.prompt_tokens * (judge.prompt_price or 0.0) + self.completion_tokens * (
            judge.completion_price or 0.0
        )
        return paid / 1e6


@dataclass(frozen=True)
class Judgement:
    """One question's judgement: the parsed value, or the reason it failed; the judge's reply text."""

    question_id: str
    value: Any = None
    reply: str | None = None
    error: str | None = None


@dataclass
class JudgeRun:
    """All judgements of a benchmark run, with usage."""

    judgements: dict[str, Judgement] = field(default_factory=dict)
    usage: JudgeUsage = field(default_factory=JudgeUsage)

    @property
    def failures(self) -> dict[str, str]:
        return {qid: item.error for qid, item in self.judgements.items() if item.error is not None}

    def summary(self, judge: Judge) -> dict[str, Any]:
        """The usage, cost and failures, JSON-ready (the results file's `judge` entry)."""
        return {
            "model": judge.model,
            **asdict(self.usage),
            "cost": self.usage.cost(judge),
            "failed": [
                {"question_id": qid, "reason": item.error, "reply": item.reply}
                for qid, item in self.judgements.items()
                if item.error is not None
            ],
        }


Parse = Callable[[str], Any]


def _retry_messages(messages: Messages, reply: str, reason: str) -> Messages:
    """The conversation again, with the unusable reply and what was wrong with it."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": f"That reply could not be read: {reason}. Answer again in the requested format."},
    ]


def _parsed(parse: Parse, reply: JudgeReply) -> tuple[Any, str | None]:
    """(value, None) or (None, why the reply is unusable)."""
    if reply.text is None:
        return None, "the reply has no text"
    if reply.truncated:
        return None, "the reply was cut off by the token limit"
    try:
        return parse(reply.text), None
    except ValueError as error:
        return None, str(error)


def judge_one(judge: Judge, question_id: str, messages: Messages, parse: Parse) -> tuple[Judgement, JudgeUsage]:
    """Ask, parse, and once more with the reason when the reply does not parse."""
    usage = JudgeUsage(judgements=1)
    try:
        reply = judge.ask(messages)
        usage.add(reply)
        value, problem = _parsed(parse, reply)
        if problem is None:
            return Judgement(question_id, value, reply.text), usage
        again = judge.ask(_retry_messages(messages, reply.text or "", problem))
        usage.add(again)
        value, second = _parsed(parse, again)
        if second is None:
            return Judgement(question_id, value, again.text), usage
        reason = f"the judge's reply does not parse ({problem}), nor after asking again ({second})"
        return Judgement(question_id, None, again.text, reason), usage
    except JudgeRequestError as error:
        return Judgement(question_id, None, None, f"no reply from the judge: {error}"), usage


def run_judge(judge: Judge, requests: Sequence[tuple[str, Messages]], parse: Parse) -> JudgeRun:
    """Judge every (question id, messages) concurrently; results keep the order of `requests`."""
    run = JudgeRun()
    with ThreadPoolExecutor(max_workers=max(1, judge.concurrency)) as pool:
        futures = [pool.submit(judge_one, judge, qid, messages, parse) for qid, messages in requests]
        for future in futures:
            judgement, usage = future.result()
            run.judgements[judgement.question_id] = judgement
            run.usage.merge(usage)
    return run


def judge_usage_line(summary: dict[str, Any]) -> str:
    """One line for the terminal from `JudgeRun.summary`: judgements, requests, cache hits, tokens, cost, failures."""
    cost = summary.get("cost")
    priced = f"cost {cost:.4f}" if cost is not None else "cost: no prices given (--judge-prompt-price)"
    return (
        f"judge {summary['model']}: {summary['judgements']} judgements, {summary['requests']} requests sent "
        f"({summary['retries']} retries), {summary['cache_hits']} answered from the cache, "
        f"{summary['prompt_tokens']} prompt + {summary['completion_tokens']} completion tokens, {priced}; "
        f"{len(summary['failed'])} failed"
    )
