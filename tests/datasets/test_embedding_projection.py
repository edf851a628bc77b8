"""The kedro-viz pictures of embeddings (PCA scatter) and of an audio folder."""

from __future__ import annotations

import base64
import inspect

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from kedro.io.core import DatasetError

from sv_kedro.datasets import EmbeddingsDataset
from sv_kedro.datasets.audio_folder_dataset import AudioFolderDataset
from sv_kedro.datasets.embedding_projection import (
    UNLABELLED,
    ProjectionError,
    labels_for,
    pca_2d,
    sample_rows,
)
from sv_kedro.scoring.embedding_table import EmbeddingTable

PNG = b"\x89PNG\r\n\x1a\n"


def _clustered_table(n_speakers: int = 4, per_speaker: int = 10, dim: int = 12) -> EmbeddingTable:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(n_speakers, dim)) * 3
    keys, rows = [], []
    for s in range(n_speakers):
        for u in range(per_speaker):
            keys.append(f"spk{s}/sess/u{u}.wav")
            rows.append(centres[s] + 0.1 * rng.normal(size=dim))
    return EmbeddingTable(keys, np.asarray(rows, dtype=np.float32))


def test_pca_separates_speakers_and_reports_variance():
    table = _clustered_table()
    coords, explained = pca_2d(table.vectors)
    assert coords.shape == (40, 2)
    assert 0.0 < explained[1] <= explained[0] <= 1.0
    # Each speaker's points sit much closer to their own mean than to the others'.
    means = np.stack([coords[i * 10 : (i + 1) * 10].mean(0) for i in range(4)])
    spread = max(
        np.linalg.norm(coords[i * 10 : (i + 1) * 10] - means[i], axis=1).max() for i in range(4)
    )
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) > spread


def test_pca_refuses_bad_rows():
    with pytest.raises(ProjectionError, match=r"row 1 has non-finite"):
        pca_2d(np.array([[1.0, 0.0], [np.nan, 1.0]]))
    with pytest.raises(ProjectionError, match="non-empty"):
        pca_2d(np.zeros((0, 3)))
    coords, explained = pca_2d(np.ones((1, 3)))  # one row: no spread at all
    assert coords.tolist() == [[0.0, 0.0]] and explained.tolist() == [0.0, 0.0]


def test_sample_rows_is_seeded_and_sorted():
    rows = sample_rows(1000, 50, seed=3)
    assert len(rows) == 50 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, sample_rows(1000, 50, seed=3))
    assert np.array_equal(sample_rows(10, 50), np.arange(10))
    with pytest.raises(ProjectionError, match="at least 2"):
        sample_rows(10, 1)


def test_labels_from_speaker_folder_or_a_table(tmp_path):
    keys = ["id1/a/1.wav", "id2/b/2.wav", "id3/c/3.wav"]
    assert labels_for(keys) == ["id1", "id2", "id3"]
    table = tmp_path / "pseudo.parquet"
    pd.DataFrame({"utt_id": keys[:2], "pseudo_label": [7, 9]}).to_parquet(table)
    assert labels_for(keys, str(table), "pseudo_label") == ["7", "9", UNLABELLED]
    with pytest.raises(
        ProjectionError, match=r"pseudo\.parquet: missing column\(s\) \['cluster'\]"
    ):
        labels_for(keys, str(table), "cluster")
    with pytest.raises(ProjectionError, match="label table not found"):
        labels_for(keys, str(tmp_path / "absent.csv"), "pseudo_label")


@pytest.mark.parametrize("name", ["emb", "emb.pt"])
def test_projection_preview_is_an_image_where_the_catalog_asks(tmp_path, name):
    viz = {"kedro-viz": {"preview_args": {"kind": "projection", "max_points": 30}}}
    dataset = EmbeddingsDataset(filepath=str(tmp_path / name), metadata=viz)
    dataset.save(_clustered_table())
    # kedro-viz reads the renderer from the annotation of preview().
    assert inspect.signature(dataset.preview).return_annotation == "ImagePreview"
    image = base64.b64decode(dataset.preview(kind="projection", max_points=30))
    assert image[:8] == PNG
    with pytest.raises(DatasetError, match="preview kind 'table'"):
        dataset.preview(kind="table")
    plain = EmbeddingsDataset(filepath=str(tmp_path / name))
    assert inspect.signature(plain.preview).return_annotation == "TablePreview"
    assert base64.b64decode(plain.projection_preview())[:8] == PNG


def test_projection_preview_names_a_broken_label_table(tmp_path):
    dataset = EmbeddingsDataset(filepath=str(tmp_path / "emb"))
    dataset.save(_clustered_table())
    with pytest.raises(DatasetError, match=r"emb: .*label table not found"):
        dataset.projection_preview(labels_from=str(tmp_path / "labels.parquet"))


def test_audio_folder_preview_shows_one_utterance(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "spk1").mkdir(parents=True)
    tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)
    sf.write(folder / "spk1" / "a.wav", tone, 16000)
    sf.write(folder / "spk1" / "b.wav", tone[:4000], 16000)
    dataset = AudioFolderDataset(
        path=str(folder), dataset="sv_kedro.datasets.AudioDataset", filename_suffix=".wav"
    )
    assert inspect.signature(dataset.preview).return_annotation == "ImagePreview"
    assert base64.b64decode(dataset.preview())[:8] == PNG
    assert base64.b64decode(dataset.preview(partition="spk1/b"))[:8] == PNG
    with pytest.raises(DatasetError, match="no partition 'spk9/x'"):
        dataset.preview(partition="spk9/x")
    empty = AudioFolderDataset(
        path=str(tmp_path / "none"), dataset="sv_kedro.datasets.AudioDataset"
    )
    with pytest.raises(DatasetError, match="No partitions found in"):
        empty.preview()
