"""``EmbeddingTable``: utterance ids and their vectors as one contiguous matrix.

A dict of a million small tensors costs seconds to build and gigabytes of overhead; a
``[n, dim]`` float32 matrix plus a key list is what scoring and clustering want anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class EmbeddingError(ValueError):
    """Embeddings that cannot be used; the message names the offending keys."""


@dataclass
class EmbeddingTable(Mapping[str, np.ndarray]):
    """Read-only mapping from utterance id to a row of ``vectors`` (``[n, dim]``).

    ``vectors`` may be a memory-mapped array: nothing here copies it.
    """

    keys_: list[str]
    vectors: np.ndarray
    _index: dict[str, int] = field(init=False, repr=False)
    _arrow_keys: pa.Array | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise EmbeddingError(f"vectors must be [n, dim], got shape {self.vectors.shape}")
        if self.vectors.shape[1] == 0 and len(self.vectors):
            # Every score of a 0-dimensional embedding is 0, and would be reported as one.
            raise EmbeddingError(f"embeddings have dimension 0 (shape {self.vectors.shape})")
        if len(self.keys_) != self.vectors.shape[0]:
            raise EmbeddingError(f"{len(self.keys_)} keys but {self.vectors.shape[0]} vectors")
        self._index = {key: i for i, key in enumerate(self.keys_)}
        if len(self._index) != len(self.keys_):
            seen: set[str] = set()
            dupes = [k for k in self.keys_ if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
            raise EmbeddingError(f"duplicate embedding keys: {dupes[:5]}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> EmbeddingTable:
        """Build from ``{utt_id: vector}`` (NumPy arrays or torch tensors)."""
        keys = list(mapping.keys())
        if not keys:
            raise EmbeddingError("no embeddings given")
        rows = [np.asarray(_to_numpy(mapping[k]), dtype=np.float32).reshape(-1) for k in keys]
        dims = {row.shape[0] for row in rows}
        if len(dims) != 1:
            bad = [k for k, row in zip(keys, rows, strict=True) if row.shape[0] != rows[0].shape[0]]
            raise EmbeddingError(f"embeddings differ in dimension {sorted(dims)}; e.g. {bad[:5]}")
        return cls(keys, np.stack(rows))

    def positions(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row index of each of ``keys`` (``[len(keys)]`` int64), -1 where absent.

        One vectorised hash join in Arrow: about 1.5x faster than ``pandas.Index.
        get_indexer`` on VoxCeleb1-H's 145k utterance ids (0.07-0.09 s against
        0.11-0.16 s here), and than a dict lookup per key.
        """
        if self._arrow_keys is None:
            self._arrow_keys = pa.array(self.keys_, type=pa.large_string())
        queries = pa.array(np.asarray(keys, dtype=object), type=pa.large_string())
        found = pc.index_in(queries, value_set=self._arrow_keys)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.vectors[self._index[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Row indices of ``keys``; raises naming the keys that are missing."""
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise EmbeddingError(
                f"{len(missing)} utterance(s) have no embedding, e.g. {missing[:5]}"
                + self.near_misses(missing)
            )
        return np.fromiter((self._index[k] for k in keys), dtype=np.int64, count=len(keys))

    def near_misses(self, missing: Sequence[str], shown: int = 3) -> str:
        """A hint for keys absent from the table that differ from a table key only by a
        leading ``./`` or a file extension (``id1/a/00001.wav`` against ``id1/a/00001``), the
        usual way trial lists and embedding files disagree; ``""`` when there are none."""
        loose: dict[str, str] = {}
        for key in self.keys_:
            loose.setdefault(_loose_key(key), key)
        wanted = [str(key) for key in missing]
        pairs = [(key, loose[_loose_key(key)]) for key in wanted if _loose_key(key) in loose]
        pairs = pairs[:shown]
        if not pairs:
            return ""
        listed = ", ".join(f"{wanted!r} as {held!r}" for wanted, held in pairs)
        return (
            f"; the embeddings hold {listed}: the keys differ by a leading './' or a file "
            "extension, so write both with the same utterance ids"
        )

    def check_usable(self) -> None:
        """Raise naming the utterances whose vectors hold NaN or inf, or are all zeros.

        A zero vector has no direction: its cosine score is 0 against everything and it
        cannot be length-normalised, so it would be scored (or clustered) silently wrong.
        """
        bad = ~np.isfinite(self.vectors).all(axis=1)
        if bad.any():
            names = [self.keys_[i] for i in np.flatnonzero(bad)[:5]]
            raise EmbeddingError(f"{int(bad.sum())} embedding(s) contain NaN or inf, e.g. {names}")
        zero = ~np.any(self.vectors, axis=1)
        if zero.any():
            names = [self.keys_[i] for i in np.flatnonzero(zero)[:5]]
            raise EmbeddingError(f"{int(zero.sum())} embedding(s) are all zeros, e.g. {names}")

    def subset(self, keys: Sequence[str]) -> EmbeddingTable:
        """A new table holding ``keys`` in that order."""
        return EmbeddingTable(list(keys), np.asarray(self.vectors[self.rows(keys)]))


def _loose_key(key: str) -> str:
    """``key`` without a leading ``./`` and without its last component's extension."""
    while key.startswith("./"):
        key = key[2:]
    folder, _, name = key.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{folder}/{stem}" if folder else stem


def _to_numpy(value: object) -> np.ndarray:
    detach = getattr(value, "detach", None)
    if detach is not None:
        return detach().cpu().float().numpy()
    return np.asarray(value)
