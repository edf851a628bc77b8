"""EmbeddingTable: utterance ids to rows of one matrix."""

from __future__ import annotations

import numpy as np
import pytest

from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable


def _table(keys: list[str]) -> EmbeddingTable:
    return EmbeddingTable(keys, np.arange(len(keys) * 2, dtype=np.float32).reshape(-1, 2))


def test_positions_find_every_key_in_query_order_and_minus_one_for_absent_ones():
    keys = ["id1/a/1.wav", "id1/a/2.wav", "ïd2/ß/3.wav", "id3/b/4.wav"]
    table = _table(keys)
    queries = ["id3/b/4.wav", "nobody.wav", "ïd2/ß/3.wav", "id1/a/1.wav", "id1/a/1.wav", ""]
    np.testing.assert_array_equal(table.positions(queries), [3, -1, 2, 0, 0, -1])
    assert table.positions([]).shape == (0,)
    assert table.positions(np.array(keys, dtype=object)).tolist() == [0, 1, 2, 3]


def test_positions_agree_with_the_mapping_on_many_keys():
    rng = np.random.default_rng(0)
    keys = [
        f"id{s:05d}/vid{v:03d}/{i:05d}.wav"
        for i, (s, v) in enumerate(rng.integers(0, 99, (5000, 2)))
    ]
    table = _table(keys)
    queries = [keys[i] for i in rng.permutation(5000)[:3000]] + ["id00000/none.wav"]
    expected = [table.rows([q])[0] if q in table else -1 for q in queries]
    np.testing.assert_array_equal(table.positions(queries), expected)


def test_duplicate_keys_and_mismatched_shapes_are_refused_by_name():
    with pytest.raises(EmbeddingError, match=r"duplicate embedding keys.*u1"):
        _table(["u1", "u2", "u1"])
    with pytest.raises(EmbeddingError, match="3 keys but 2 vectors"):
        EmbeddingTable(["a", "b", "c"], np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(EmbeddingError, match=r"no embedding.*ghost"):
        _table(["u1"]).rows(["ghost"])


def test_keys_differing_by_extension_or_dot_slash_are_pointed_out():
    table = _table(["id1/a/00001", "./id1/a/00002.wav", "id2/b.c/00003.flac", ".hidden"])
    hint = table.near_misses(["id1/a/00001.wav", "id1/a/00002.m4a", "id2/b.c/00003", "nobody"])
    assert hint == (
        "; the embeddings hold 'id1/a/00001.wav' as 'id1/a/00001', 'id1/a/00002.m4a' as "
        "'./id1/a/00002.wav', 'id2/b.c/00003' as 'id2/b.c/00003.flac': the keys differ by a "
        "leading './' or a file extension, so write both with the same utterance ids"
    )
    assert table.near_misses(["id1/a", "b.c/00003", ".hidden.wav", "id2/b/00003"]) == (
        "; the embeddings hold '.hidden.wav' as '.hidden': the keys differ by a leading './' "
        "or a file extension, so write both with the same utterance ids"
    )
    with pytest.raises(EmbeddingError, match=r"\['id1/a/00001.wav'\]; the embeddings hold"):
        table.rows(["id1/a/00001.wav"])


def test_check_usable_names_all_zero_vectors_after_non_finite_ones():
    table = _table(["u1", "u2", "u3"])
    table.check_usable()
    table.vectors[1] = 0.0
    with pytest.raises(EmbeddingError, match=r"1 embedding\(s\) are all zeros, e.g. \['u2'\]"):
        table.check_usable()
    table.vectors[2, 0] = np.nan
    with pytest.raises(EmbeddingError, match=r"NaN or inf, e.g. \['u3'\]"):
        table.check_usable()
