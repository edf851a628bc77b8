"""Bad input to the back-ends, metrics and figures is refused with a message naming it,
never turned into a plausible number."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from sv_kedro.scoring.asnorm import as_norm_scores, cohort_statistics, speaker_cohort
from sv_kedro.scoring.cosine import cosine_scores, fuse_scores, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
from sv_kedro.scoring.metrics import compute_eer, compute_min_dcf, verification_metrics
from sv_kedro.scoring.plda import LDA, lda_plda_pipeline_fit, plda_scores
from sv_kedro.scoring.plots import det_curve_figure, score_histogram_figure
from sv_kedro.scoring.trial_list import trials_frame

RNG = np.random.default_rng(0)
TABLE = EmbeddingTable([f"u{i}" for i in range(4)], RNG.normal(size=(4, 8)).astype(np.float32))
TRIALS = trials_frame([1, 0], ["u0", "u1"], ["u2", "u3"])
COHORT = RNG.normal(size=(20, 8)).astype(np.float32)


def _as_norm(cohort: np.ndarray = COHORT, table: EmbeddingTable = TABLE, **kwargs) -> np.ndarray:
    return as_norm_scores(cosine_scores(table, TRIALS), table, TRIALS, cohort, **kwargs)


# --- AS-norm ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cohort", "message"),
    [
        (COHORT[:1], r"cohort has 1 vector\(s\)"),
        (COHORT[:0], r"cohort has 0 vector\(s\)"),
        (np.repeat(COHORT[:1], 5, axis=0), r"4 utterance\(s\) score \(nearly\) the same.*'u0'"),
        (np.where(np.arange(20)[:, None] == 7, np.nan, COHORT), r"cohort rows \[7\]"),
        (np.where(np.arange(20)[:, None] == 3, 0, COHORT), r"all zeros, at cohort rows \[3\]"),
        (COHORT[:, :7], r"cohort \(20, 7\) does not match embeddings of dim 8"),
    ],
    ids=["one-speaker", "empty", "copies", "nan", "zero", "dim"],
)
def test_as_norm_refuses_a_cohort_that_would_give_nan_or_1e8_scores(cohort, message):
    with pytest.raises(ValueError, match=message):
        _as_norm(cohort.astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_n": 1}, r"top_n must be an integer >= 2, got 1"),
        ({"top_n": 0}, r"top_n must be an integer >= 2, got 0"),
        ({"top_n": -3}, r"top_n must be an integer >= 2, got -3"),
        ({"chunk": 0}, r"chunk must be an integer >= 1, got 0"),
        ({"chunk": -1}, r"chunk must be an integer >= 1, got -1"),
    ],
)
def test_as_norm_refuses_bad_counts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _as_norm(**kwargs)


def test_as_norm_names_an_all_zero_test_utterance_and_checks_the_score_count():
    vectors = TABLE.vectors.copy()
    vectors[2] = 0
    with pytest.raises(EmbeddingError, match=r"1 utterance\(s\).*\['u2'\]"):
        _as_norm(table=EmbeddingTable(TABLE.keys_, vectors))
    with pytest.raises(ValueError, match=r"scores of shape \(1,\) for 2 trials"):
        as_norm_scores(np.zeros(1), TABLE, TRIALS, COHORT)


def test_small_cohort_is_said_and_huge_chunk_changes_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="sv_kedro.scoring.asnorm"):
        small = _as_norm(top_n=300)
    assert "20 vector(s), fewer than top_n=300" in caplog.text
    np.testing.assert_array_equal(_as_norm(top_n=300, chunk=10**12), small)
    np.testing.assert_allclose(_as_norm(top_n=20, chunk=1), small, atol=1e-5)


@pytest.mark.parametrize(
    ("vectors", "speakers", "message"),
    [
        ([[np.nan, 1.0], [1.0, 0.0], [0.0, 1.0]], "abc", r"NaN or inf, e\.g\. \['a'\]"),
        ([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "abc", r"all zeros, e\.g\. \['a'\]"),
        ([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], "ssc", r"1 speaker\(s\) cancel out.*\['s'\]"),
    ],
)
def test_speaker_cohort_names_the_utterance_or_speaker(vectors, speakers, message):
    table = EmbeddingTable(["a", "b", "c"], np.array(vectors, dtype=np.float32))
    with pytest.raises(EmbeddingError, match=message):
        speaker_cohort(table, dict(zip("abc", speakers, strict=True)))


def test_cohort_statistics_of_a_valid_cohort_are_unchanged():
    mean, std = cohort_statistics(TABLE.vectors, COHORT, top_n=5)
    unit = COHORT / np.linalg.norm(COHORT, axis=1, keepdims=True)
    scores = (TABLE.vectors / np.linalg.norm(TABLE.vectors, axis=1, keepdims=True)) @ unit.T
    top = np.sort(scores, axis=1)[:, -5:]
    np.testing.assert_allclose(mean, top.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(std, top.std(axis=1), atol=1e-6)


# --- LDA / PLDA ------------------------------------------------------------------------


def _training(n_speakers: int, per: int, dim: int = 8, copies: bool = False):
    x = RNG.normal(size=(n_speakers * per, dim)).astype(np.float32)
    if copies:
        x = np.repeat(x[::per], per, axis=0)
    return x, np.repeat([f"s{i}" for i in range(n_speakers)], per)


@pytest.mark.parametrize("lda_dim", [None, 4])
@pytest.mark.parametrize("copies", [False, True], ids=["one-utt-each", "copies"])
def test_lda_plda_refuse_speakers_without_within_speaker_variation(lda_dim, copies):
    x, labels = _training(10, 1 if not copies else 3, copies=copies)
    with pytest.raises(ValueError, match="none of the 10 speakers has two different embeddings"):
        lda_plda_pipeline_fit(x, labels, lda_dim)


def test_plda_refuses_a_singular_within_speaker_covariance():
    # 3 speakers x 2 utterances in 64 dimensions: 3 within-speaker directions of 64.
    x, labels = _training(3, 2, dim=64)
    with pytest.raises(ValueError, match=r"within-speaker covariance has rank 3 of 64.*lda_dim"):
        lda_plda_pipeline_fit(x, labels, None)


def test_lda_plda_name_bad_training_rows_and_labels():
    x, labels = _training(10, 3)
    x[4, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"1 training embedding\(s\) hold NaN or inf, at rows \[4\]"
    ):
        lda_plda_pipeline_fit(x, labels, 4)
    x, labels = _training(10, 3)
    unlabelled = labels.astype(object)
    unlabelled[[0, 5]] = None
    with pytest.raises(ValueError, match=r"2 training embedding\(s\) have no speaker label"):
        lda_plda_pipeline_fit(x, unlabelled, 4)
    with pytest.raises(ValueError, match=r"29 speaker labels for embeddings \(30, 8\)"):
        lda_plda_pipeline_fit(x, labels[:-1], 4)
    for dim in (0, -1, 2.5):
        with pytest.raises(ValueError, match="LDA: dim must be an integer >= 1"):
            LDA.fit(x, labels, dim)


@pytest.mark.parametrize("lda_dim", [None, 4])
def test_plda_scores_refuse_test_embeddings_of_another_dimension(lda_dim):
    lda, plda = lda_plda_pipeline_fit(*_training(10, 4, dim=6), lda_dim)
    with pytest.raises(ValueError, match=r"test embeddings have dimension 8, but the .* on 6"):
        plda_scores(TABLE, TRIALS, lda, plda)


# --- cosine, fusion, tables ------------------------------------------------------------


def test_centring_mean_of_another_dimension_is_refused():
    with pytest.raises(EmbeddingError, match=r"mean has shape \(7,\); the embeddings need \(8,\)"):
        cosine_scores(TABLE, TRIALS, mean=np.zeros(7))
    with pytest.raises(EmbeddingError, match=r"mean has shape \(1,\)"):
        cosine_scores(TABLE, TRIALS, mean=np.ones(1))


def test_missing_utterances_are_named_as_plain_strings_with_the_near_miss():
    table = EmbeddingTable(["./u0", "u1", "u2", "u3"], TABLE.vectors)
    with pytest.raises(
        EmbeddingError, match=r"e\.g\. \['u0'\]; the embeddings hold 'u0' as './u0'"
    ):
        trial_rows(table, TRIALS)
    unrelated = EmbeddingTable(["x0", "u1", "u2", "u3"], TABLE.vectors)
    with pytest.raises(EmbeddingError, match=r"e\.g\. \['u0'\]$"):
        trial_rows(unrelated, TRIALS)


@pytest.mark.parametrize(
    ("scores", "weights", "message"),
    [
        ([np.ones(2), np.ones(2)], [0, 0], "not all 0"),
        ([np.ones(2), np.ones(2)], [1, -1], ">= 0"),
        ([np.ones(2), np.ones(2)], [1, np.nan], "finite"),
        ([np.ones((2, 2)), np.ones((2, 2))], None, "1-D"),
    ],
)
def test_fusion_refuses_weights_or_shapes_that_give_nan_or_flipped_scores(scores, weights, message):
    with pytest.raises(ValueError, match=message):
        fuse_scores(scores, weights)


def test_a_table_of_zero_dimensional_embeddings_is_refused():
    with pytest.raises(EmbeddingError, match=r"dimension 0 \(shape \(2, 0\)\)"):
        EmbeddingTable(["a", "b"], np.zeros((2, 0), dtype=np.float32))
    with pytest.raises(EmbeddingError, match="dimension 0"):
        EmbeddingTable.from_mapping({"a": np.zeros(0), "b": np.zeros(0)})


# --- metrics and figures ---------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [[2, 0, 1], [-1, 0, 1], [0.5, 0, 1], [np.nan, 0, 1], ["true", 0, 1]],
    ids=["2", "-1", "half", "nan", "string"],
)
def test_labels_other_than_0_or_1_are_named_not_counted_as_targets(labels):
    labels = np.array(labels, dtype=object if isinstance(labels[0], str) else None)
    with pytest.raises(ValueError, match=r"labels must be 0 \(non-target\) or 1.*indices \[0\]"):
        verification_metrics(np.array([0.1, 0.2, 0.3]), labels)


def test_nullable_labels_with_a_gap_are_refused():
    labels = pd.array([pd.NA, 0, 1], dtype="Int8")
    with pytest.raises(ValueError, match=r"indices \[0\]"):
        compute_eer(np.array([0.1, 0.2, 0.3]), labels)


def test_boolean_and_integer_labels_still_give_the_same_metrics():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    as_int = verification_metrics(scores, np.array([0, 0, 1, 1]))
    assert verification_metrics(scores, np.array([False, False, True, True])) == as_int
    assert as_int["eer"] == pytest.approx(0.5) and as_int["n_targets"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p_target": 0.0}, "strictly between 0 and 1, got 0.0"),
        ({"p_target": 1.0}, "strictly between 0 and 1, got 1.0"),
        ({"p_target": 1.5}, "strictly between 0 and 1, got 1.5"),
        ({"p_target": -0.1}, "strictly between 0 and 1"),
        ({"p_target": float("nan")}, "p_target must be a finite number"),
        ({"p_target": "0.01"}, "p_target must be a finite number, got '0.01'"),
        ({"c_miss": 0.0}, "c_miss and c_fa must be > 0"),
        ({"c_fa": -1.0}, "c_miss and c_fa must be > 0"),
    ],
)
def test_min_dcf_refuses_costs_that_make_it_nan_or_meaningless(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_min_dcf(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 0]), **kwargs)


def test_verification_metrics_checks_its_p_targets():
    with pytest.raises(ValueError, match="p_target must lie strictly between 0 and 1, got 0"):
        verification_metrics(np.array([0.1, 0.2]), np.array([0, 1]), p_targets=(0.01, 0))


def test_figures_of_degenerate_scores(recwarn):
    with pytest.raises(ValueError, match=r"DET curve of 'only-targets': need at least one"):
        det_curve_figure({"only-targets": (np.array([0.1, 0.2]), np.array([1, 1]))})
    with pytest.raises(ValueError, match="need at least one target and one non-target"):
        score_histogram_figure(np.array([]), np.array([]))
    fig = score_histogram_figure(np.zeros(3), np.array([0, 1, 1]))
    assert fig.axes[0].get_title() == "scores (EER 50.00%)"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
