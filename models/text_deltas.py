"""A running request's output as text deltas that are final: stop strings held back, whole characters only.

The decode loop feeds `TextDeltas.update` after every token; it hands `sink` the text
that no later token can change: the bytes before the earliest point where a stop
string might still begin (a suffix of the output that is a prefix of some stop
string is held back), decoded as whole UTF-8 characters (an incomplete character
waits for its next bytes; invalid bytes are dropped, as in the final text). `finish`
hands over the rest, so the deltas concatenate to exactly the generation's text.
"""

from __future__ import annotations

import codecs

from models.requests import TextSink
from models.sampling import StopText


class TextDeltas:
    """Hands a request's settled output to `sink`, in order (decode loop thread only)."""

    def __init__(self, text: StopText, sink: TextSink) -> None:
        self._text = text
        self._sink = sink
        self._sent = 0  # bytes of the output already decoded
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")

    def update(self) -> None:
        """Hand over what the latest token settled (nothing when it is all held back)."""
        self._emit(self._text.settled(), final=False)

    def finish(self) -> None:
        """Hand over the rest of the output (up to its stop string): the request ended."""
        self._emit(self._text.settled(final=True), final=True)

    def _emit(self, end: int, *, final: bool) -> None:
        if end < self._sent:
            return
        delta = self._decoder.decode(self._text.span(self._sent, end), final)
        self._sent = end
        if delta:
            self._sink(delta)
