"""An answer's text as its tokens arrive: what may be streamed now, and the final text.

The final answer is what `llavakit chat` prints: the generated tokens decoded without special
tokens, cut before the first stop sequence, stripped of surrounding whitespace. Streaming must
add up to exactly that, so a piece is sent only once no later token can change it: a trailing
partial UTF-8 character (decoded as U+FFFD), trailing whitespace (stripped if the answer ends
there) and a tail that could be the start of a stop sequence wait for the next token.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

_INCOMPLETE = "\ufffd"


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """The longest tail of `text` that is the start of some stop sequence (it may still become one)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class AnswerText:
    """The tokens of one answer, decoded; `add` returns what can be sent, `finish` the rest."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.token_ids: list[int] = []
        self.sent = ""
        self.stopped = False  # a stop sequence appeared: the answer is complete
        self._final: str | None = None

    def _decoded(self) -> str:
        """The answer so far, cut before a stop sequence (which sets `stopped`)."""
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cuts = [index for index in (text.find(stop) for stop in self.stop) if index >= 0]
        if cuts:
            self.stopped = True
            return text[: min(cuts)]
        return text

    def _new_piece(self, ready: str) -> str:
        """`ready`'s part not sent yet (nothing when decoding changed text already sent)."""
        if len(ready) <= len(self.sent) or not ready.startswith(self.sent):
            return ""
        piece = ready[len(self.sent) :]
        self.sent = ready
        return piece

    def add(self, token_id: int) -> str:
        """Take one generated token (not an end token); return the text that is now certain."""
        self.token_ids.append(token_id)
        text = self._decoded()
        if self.stopped:
            return self._new_piece(text.strip())
        held = _stop_prefix_length(text, self.stop)
        ready = text[: len(text) - held].lstrip()
        ready = ready.rstrip(_INCOMPLETE).rstrip()
        return self._new_piece(ready)

    @property
    def text(self) -> str:
        """The whole answer (call after the last token)."""
        if self._final is None:
            self._final = self._decoded().strip()
        return self._final

    def finish(self) -> str:
        """The rest of the answer not yet returned by `add`."""
        final = self.text
        return final[len(self.sent) :] if final.startswith(self.sent) else ""
