"""Text: a word-level tokenizer with a vocabulary learned from the training text."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from ._base import PREPROCESSORS, Preprocessor, ReadContext, bad, check_number, is_missing

PAD, UNK, SEP = "<pad>", "<unk>", "<sep>"
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@PREPROCESSORS.register("text")
class TextPreprocessor(Preprocessor):
    """Lowercase, split into words and punctuation, map to ids, pad or truncate.

    Ids: 0 = ``<pad>``, 1 = ``<unk>`` (out of vocabulary), 2 = ``<sep>`` (between grouped
    columns), then the vocabulary, most frequent first (ties alphabetical).

    Args:
        columns: Text columns; several are joined with ``<sep>``.
        lowercase: Lowercase before tokenizing.
        min_freq: Words seen fewer times in training become ``<unk>``.
        max_vocab: Keep at most this many words (most frequent first).
        max_length: Tokens kept per row (``[max_length]`` int64 output, 0-padded).
        labeled: Columns written as ``Name: value`` (the numeric and categorical columns of a
            text group, see :func:`render_cells`).
    """

    modality = "text"
    eager = True
    _config_keys = ("lowercase", "min_freq", "max_vocab", "max_length", "labeled")

    def __init__(self, columns, lowercase: bool = True, min_freq: int = 2, max_vocab: int = 30000,
                 max_length: int = 128, labeled=()):
        super().__init__(columns)
        self.lowercase, self.min_freq, self.max_vocab, self.max_length = lowercase, min_freq, max_vocab, max_length
        self.labeled = list(labeled)

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower() if self.lowercase else text)

    def fit(self, df: pd.DataFrame, ctx: ReadContext):
        state = self.fit_stream_start()
        self.fit_stream_update(state, df)
        return self.fit_stream_finish(state, ctx)

    def fit_stream_start(self) -> Counter:  # a streamed fit: the word counts of every chunk of rows, added up
        for what, low in (("min_freq", 1), ("max_vocab", 3), ("max_length", 1)):
            check_number(type(self).__name__, what, getattr(self, what), low)
        return Counter()

    def fit_stream_update(self, counts: Counter, df: pd.DataFrame) -> None:
        for c in self.columns:
            for v in df[c]:
                if not is_missing(v):
                    counts.update(self.tokenize(render_cell(v, c, self.labeled)))

    def fit_stream_finish(self, counts: Counter, ctx: ReadContext):
        words = sorted((w for w, n in counts.items() if n >= self.min_freq), key=lambda w: (-counts[w], w))
        self.vocab_ = [PAD, UNK, SEP] + words[: self.max_vocab]
        self._index = {w: i for i, w in enumerate(self.vocab_)}
        self.fitted_ = True
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.vocab_)

    def read(self, cells, row, ctx):
        parts = [self.tokenize(t) for t in render_cells(cells, self.columns, self.labeled, row)]
        if not parts:
            return None
        ids: list[int] = []
        for i, toks in enumerate(parts):
            if i:
                ids.append(2)
            ids.extend(self._index.get(t, 1) for t in toks)
        out = np.zeros(self.max_length, dtype=np.int64)
        ids = ids[: self.max_length] or [1]  # a cell of only whitespace-free symbols still counts as present
        out[: len(ids)] = ids
        return {"tokens": out}

    def item_spec(self):
        return {"tokens": ((self.max_length,), np.dtype(np.int64))}

    def extra_state(self):
        return {"vocab": self.vocab_}, {}

    def load_extra_state(self, meta, arrays):
        self.vocab_ = list(meta["vocab"])
        self._index = {w: i for i, w in enumerate(self.vocab_)}


def _as_text(v, row=None, column=None) -> str:
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError as e:
            raise bad(row, column, f"is not valid UTF-8 text: byte 0x{bytes(v)[e.start]:02x} at offset {e.start}",
                      hint="decode the bytes to str before passing the table, or fix the encoding") from None
    return str(v)


def render_cell(v, column: str, labeled=(), row=None) -> str:
    """One cell as text: ``Name: value`` for the labeled (numeric/categorical) columns, whole
    numbers without a trailing ``.0``; the text itself otherwise."""
    if column not in labeled:
        return _as_text(v, row, column)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    elif isinstance(v, (float, np.floating)):
        v = f"{float(v):.6g}"
    return f"{column}: {_as_text(v, row, column)}"


def render_cells(cells, columns, labeled=(), row=None) -> list[str]:
    """The present cells of a row as texts, in column order (missing cells left out)."""
    return [render_cell(v, c, labeled, row) for c, v in zip(columns, cells) if not is_missing(v)]
