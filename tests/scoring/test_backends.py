"""Cosine, AS-norm, LDA and PLDA back-ends against direct computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

from sv_kedro.scoring.asnorm import as_norm_scores, cohort_statistics, speaker_cohort
from sv_kedro.scoring.cosine import (
    cosine_scores,
    fuse_scores,
    normalise_embeddings,
    trial_rows,
)
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
from sv_kedro.scoring.metrics import compute_eer
from sv_kedro.scoring.plda import LDA, TwoCovariancePLDA, lda_plda_pipeline_fit, plda_scores
from sv_kedro.scoring.trial_list import trials_frame


def speaker_data(n_speakers=30, per_speaker=8, dim=16, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, dim)) * 2
    labels = np.repeat(np.arange(n_speakers), per_speaker)
    vectors = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    keys = [f"spk{s:03d}/utt{i:03d}.wav" for s, i in zip(labels, range(len(labels)), strict=True)]
    return EmbeddingTable(keys, vectors.astype(np.float32)), labels


def all_trials(table, labels, n=600, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(table), n)
    b = rng.integers(0, len(table), n)
    keep = a != b
    return pd.DataFrame(
        {
            "label": (labels[a] == labels[b])[keep].astype(int),
            "enrol": np.array(table.keys_)[a[keep]],
            "test": np.array(table.keys_)[b[keep]],
        }
    )


def test_cosine_scores_equal_direct_cosine_and_chunking_is_invisible():
    table, labels = speaker_data()
    trials = all_trials(table, labels)
    direct = [
        float(np.dot(table[e], table[t]) / np.linalg.norm(table[e]) / np.linalg.norm(table[t]))
        for e, t in zip(trials.enrol, trials.test, strict=True)
    ]
    np.testing.assert_allclose(cosine_scores(table, trials), direct, atol=1e-6)
    np.testing.assert_allclose(cosine_scores(table, trials, chunk=7), direct, atol=1e-6)


def test_centred_and_unnormalised_scores_equal_direct_computations():
    table, labels = speaker_data()
    trials = all_trials(table, labels)
    mean = table.vectors.mean(axis=0)
    pairs = list(zip(trials.enrol, trials.test, strict=True))
    centred = {k: table[k] - mean for k in table}
    cosine = [
        np.dot(centred[e], centred[t]) / np.linalg.norm(centred[e]) / np.linalg.norm(centred[t])
        for e, t in pairs
    ]
    np.testing.assert_allclose(cosine_scores(table, trials, mean=mean), cosine, atol=1e-6)
    dots = [np.dot(centred[e], centred[t]) for e, t in pairs]
    np.testing.assert_allclose(
        cosine_scores(table, trials, mean=mean, length_norm=False), dots, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("scale", [1e-9, 1e15])
def test_very_short_or_long_rows_score_their_direction(scale: float):
    table, labels = speaker_data()
    trials = all_trials(table, labels)
    scaled = EmbeddingTable(table.keys_, table.vectors * np.float32(scale))
    np.testing.assert_allclose(
        cosine_scores(scaled, trials), cosine_scores(table, trials), atol=1e-6
    )


def test_an_all_zero_embedding_scores_zero_not_nan():
    table, _ = speaker_data()
    vectors = table.vectors.copy()
    vectors[3] = 0.0
    zeros = EmbeddingTable(table.keys_, vectors)
    keys = table.keys_
    trials = pd.DataFrame(
        {"label": [1, 0], "enrol": [keys[3], keys[0]], "test": [keys[1], keys[3]]}
    )
    np.testing.assert_array_equal(cosine_scores(zeros, trials), [0.0, 0.0])


@pytest.mark.parametrize("shared", [True, False], ids=["shared-categories", "own-categories"])
def test_categorical_trials_resolve_to_the_same_rows_as_plain_strings(shared: bool):
    table, labels = speaker_data()
    plain = all_trials(table, labels)
    if shared:
        categorical = trials_frame(plain.label.to_numpy(), plain.enrol, plain.test)
        assert categorical.enrol.cat.categories is categorical.test.cat.categories
    else:
        categorical = plain.astype({"enrol": "category", "test": "category"})
    enrol, test = trial_rows(table, categorical)
    assert enrol.tolist() == table.rows(list(plain.enrol)).tolist()
    assert test.tolist() == table.rows(list(plain.test)).tolist()
    categorical.loc[2, "test"] = categorical.enrol[0]  # still a known category
    categorical["test"] = categorical["test"].cat.add_categories(["nobody/missing.wav"])
    categorical.loc[3, "test"] = "nobody/missing.wav"
    with pytest.raises(EmbeddingError, match=r"nobody/missing\.wav"):
        trial_rows(table, categorical)


def test_missing_utterance_and_nan_are_named():
    table, labels = speaker_data()
    trials = all_trials(table, labels).head(3).copy()
    trials.loc[1, "test"] = "nobody/missing.wav"
    with pytest.raises(EmbeddingError, match=r"nobody/missing\.wav"):
        cosine_scores(table, trials)
    vectors = table.vectors.copy()
    vectors[5, 0] = np.nan
    bad = EmbeddingTable(table.keys_, vectors)
    trials = pd.DataFrame({"label": [1], "enrol": [table.keys_[5]], "test": [table.keys_[6]]})
    with pytest.raises(EmbeddingError, match=table.keys_[5]):
        cosine_scores(bad, trials)


@pytest.mark.parametrize("length_norm", [True, False])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_named_with_or_without_length_norm(value: float, length_norm: bool):
    table, _ = speaker_data()
    vectors = table.vectors.copy()
    vectors[[4, 9], 3] = value
    bad = EmbeddingTable(table.keys_, vectors)
    keys = table.keys_
    trials = pd.DataFrame(
        {"label": [1, 0], "enrol": [keys[4], keys[0]], "test": [keys[1], keys[9]]}
    )
    with pytest.raises(EmbeddingError, match=rf"2 embedding\(s\) contain NaN or inf.*{keys[4]}"):
        cosine_scores(bad, trials, length_norm=length_norm)
    with pytest.raises(EmbeddingError, match="centring mean"):
        cosine_scores(table, trials, mean=np.full(table.dim, value, dtype=np.float32))


def test_a_finite_row_whose_squares_overflow_float32_still_scores_its_direction():
    table, _ = speaker_data()
    vectors = table.vectors.copy()
    vectors[2] *= np.float32(1e20)  # squared norm ~1e40 > float32 max, yet every value finite
    huge = EmbeddingTable(table.keys_, vectors)
    keys = table.keys_
    trials = pd.DataFrame(
        {"label": [1, 0], "enrol": [keys[2], keys[0]], "test": [keys[3], keys[2]]}
    )
    np.testing.assert_allclose(cosine_scores(huge, trials), cosine_scores(table, trials), atol=1e-6)
    # The shared normaliser (AS-norm, PLDA) keeps the direction too.
    np.testing.assert_allclose(
        normalise_embeddings(huge.vectors)[2], normalise_embeddings(table.vectors)[2], atol=1e-6
    )


def test_fusion_is_weighted_mean():
    np.testing.assert_allclose(fuse_scores([np.array([0.0, 1.0]), np.array([1.0, 3.0])]), [0.5, 2])
    with pytest.raises(ValueError, match="differ in length"):
        fuse_scores([np.zeros(2), np.zeros(3)])


def test_as_norm_matches_naive_formula():
    table, labels = speaker_data(seed=3)
    trials = all_trials(table, labels, n=50)
    cohort_table, cohort_labels = speaker_data(n_speakers=40, seed=4)
    speakers = pd.Series(cohort_labels.astype(str), index=cohort_table.keys_)
    cohort = speaker_cohort(cohort_table, speakers)
    assert cohort.shape == (40, 16)
    raw = cosine_scores(table, trials)
    normed = as_norm_scores(raw, table, trials, cohort, top_n=10, chunk=3)

    def stats(vec):
        s = cohort @ (vec / np.linalg.norm(vec))
        top = np.sort(s)[-10:]
        return top.mean(), top.std()

    for i, (e, t) in enumerate(zip(trials.enrol, trials.test, strict=True)):
        me, se = stats(table[e])
        mt, st = stats(table[t])
        expected = 0.5 * ((raw[i] - me) / se + (raw[i] - mt) / st)
        assert normed[i] == pytest.approx(expected, abs=1e-5)


def test_cohort_statistics_top_n_capped_by_cohort_size():
    rng = np.random.default_rng(0)
    mean, std = cohort_statistics(rng.normal(size=(5, 8)), rng.normal(size=(3, 8)), top_n=300)
    assert mean.shape == (5,) and np.all(std >= 0)


def test_plda_llr_equals_gaussian_likelihood_ratio():
    rng = np.random.default_rng(5)
    dim = 4
    a = rng.normal(size=(dim, dim))
    between = a @ a.T + np.eye(dim)
    w = rng.normal(size=(dim, dim))
    within = 0.5 * w @ w.T + 0.5 * np.eye(dim)
    plda = TwoCovariancePLDA(mean=np.zeros(dim), between=between, within=within)
    x = rng.normal(size=(6, dim)).astype(np.float32)
    table = EmbeddingTable([f"u{i}" for i in range(6)], x)
    trials = pd.DataFrame({"enrol": ["u0", "u1", "u2"], "test": ["u3", "u4", "u5"]})
    got = plda.score_trials(table, trials)
    total = between + within
    same = np.block([[total, between], [between, total]])
    diff = np.block([[total, np.zeros_like(total)], [np.zeros_like(total), total]])
    expected = []
    for e, t in [(0, 3), (1, 4), (2, 5)]:
        z = np.r_[x[e], x[t]].astype(np.float64)
        expected.append(
            multivariate_normal(np.zeros(2 * dim), same).logpdf(z)
            - multivariate_normal(np.zeros(2 * dim), diff).logpdf(z)
        )
    offset = np.mean(np.array(expected) - got)
    np.testing.assert_allclose(got + offset, expected, atol=1e-6)


def test_lda_plda_separates_speakers_better_than_chance_and_lda_reduces_dim():
    table, labels = speaker_data(n_speakers=40, per_speaker=10, dim=24, spread=1.5, seed=11)
    lda = LDA.fit(table.vectors, labels, dim=8)
    assert lda.transform(table.vectors).shape == (400, 8)
    test_table, test_labels = speaker_data(
        n_speakers=20, per_speaker=6, dim=24, spread=1.5, seed=12
    )
    trials = all_trials(test_table, test_labels, n=2000)
    lda, plda = lda_plda_pipeline_fit(table.vectors, labels, lda_dim=16)
    scores = plda_scores(test_table, trials, lda, plda)
    eer = compute_eer(scores, trials["label"].to_numpy())
    assert eer < 0.25
