"""Characters <-> integer ids, with reserved padding, start and end ids.

    vocab = Vocabulary("abc")
    vocab.encode("cab")                  # [5, 3, 4]
    vocab.decode([5, 3, 4, END, PAD])    # "cab"   (stops at the end id)
    vocab.decode([5, START, 3, 4])       # "c\ufffdab\ufffd"  (a stray special id, and no END)
    pad([[5, 3], [4]])                   # array([[5, 3], [4, 0]])  shape (batch, max_len)

Ids 0, 1 and 2 are PAD, START and END in every vocabulary; characters follow in
the order of the alphabet they were built from.  A task's source and target
vocabularies are built from its `input_alphabet` and `output_alphabet`.

Decoding a prediction never hides an error: a special id before END, and a
missing END, show as `INVALID` (U+FFFD), a character no alphabet may hold, so
such a prediction can never equal a target.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

PAD, START, END = 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>")
INVALID = "\ufffd"  # stands for a special id before END, or a missing END, in decoded text


class Vocabulary:
    """A bijection between the characters of an alphabet and ids `len(SPECIALS)..size-1`."""

    def __init__(self, alphabet: str) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet repeats characters: {alphabet!r}")
        if INVALID in alphabet:
            raise ValueError(f"alphabet holds {INVALID!r} (U+FFFD), which stands for invalid ids in decoded text")
        self.alphabet = alphabet
        self._ids = {ch: i + len(SPECIALS) for i, ch in enumerate(alphabet)}

    @property
    def size(self) -> int:
        """Number of ids, specials included."""
        return len(self.alphabet) + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text` (no start or end id); unknown characters raise ValueError."""
        try:
            return [self._ids[ch] for ch in text]
        except KeyError as exc:
            raise ValueError(
                f"character {exc.args[0]!r} of {text!r} is not in the vocabulary {self.alphabet!r}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first END.  Every PAD or START id before it, and a
        missing END, adds one INVALID character, so the text never matches a target by
        accident; ids outside the vocabulary raise ValueError."""
        out = []
        offset = len(SPECIALS)
        for i in ids:
            i = int(i)
            if i == END:
                return "".join(out)
            if not 0 <= i < self.size:
                raise ValueError(f"id {i} is outside the vocabulary (0..{self.size - 1})")
            out.append(self.alphabet[i - offset] if i >= offset else INVALID)
        return "".join(out) + INVALID

    def encode_batch(
        self, texts: Sequence[str], length: int | None = None, start: bool = False, end: bool = False
    ) -> np.ndarray:
        """Encodes and right-pads a batch: int32 array of shape (batch, length).

        `start`/`end` prepend START / append END to each row; `length` defaults
        to the longest row.
        """
        rows = [([START] if start else []) + self.encode(t) + ([END] if end else []) for t in texts]
        return pad(rows, length)

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        """`decode` applied to each row of a (batch, time) array (each row must hold its END)."""
        return [self.decode(row) for row in ids]


def pad(rows: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
    """Right-pads integer rows with PAD into an int32 array of shape (len(rows), length)."""
    longest = max((len(r) for r in rows), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a row of length {longest} does not fit a padded length of {length}")
    out = np.full((len(rows), length), PAD, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
