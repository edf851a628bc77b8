"""The evaluation pipeline in real Kedro sessions: checkpoints -> metrics -> comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.runner import SequentialRunner

from sv_kedro.models.factory import build_model, checkpoint_model_config
from sv_kedro.pipelines import evaluation
from sv_kedro.scoring.embedding_table import EmbeddingError
from sv_kedro.training.checkpoint import build_checkpoint, save_checkpoint

TINY_DATA = {
    "data_engineering": {
        "synthetic": {
            "corpus": {
                "n_speakers": 8,
                "utterances_per_speaker": 6,
                "min_duration_s": 1.0,
                "max_duration_s": 1.4,
            }
        },
        "split": {"test_speakers": 3, "validation_ratio": 0.34},
        "trials": {"targets_per_utt": 3, "nontargets_per_utt": 4},
        "validation_pairs": {"n_pairs": 8},
    }
}
FAST_EVAL = {
    "evaluation": {
        "extraction": {"n_crops": 2, "crop_seconds": 0.5, "cache_dir": None},
        "scoring": {"cohort_utts_per_speaker": 3, "top_n": 3, "lda_dim": 4},
    }
}


def write_checkpoint(project: Path, system: str, seed: int, config: dict) -> None:
    torch.manual_seed(seed)
    model = build_model(config)
    payload = build_checkpoint(
        "ecapa_tdnn", checkpoint_model_config(model), model.state_dict(), epoch=0, step=0
    )
    save_checkpoint(project / f"data/06_models/{system}/checkpoint.pt", payload)


@pytest.fixture()
def prepared_project(kedro_project: Path, run_kedro, tiny_ecapa_config) -> Path:
    run_kedro(kedro_project, ["data_engineering"], params={**TINY_DATA, **FAST_EVAL})
    for seed, system in enumerate(["toy_a", "toy_b"]):
        write_checkpoint(kedro_project, system, seed, tiny_ecapa_config)
    return kedro_project


def run_evaluation(project: Path, systems: list[str]) -> None:
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, runtime_params={**TINY_DATA, **FAST_EVAL}) as s:
        catalog = s.load_context().catalog
        SequentialRunner().run(evaluation.create_pipeline(systems), catalog)


def test_every_system_gets_metrics_and_one_comparison(prepared_project: Path):
    run_evaluation(prepared_project, ["toy_a", "toy_b"])
    data = prepared_project / "data"
    for system in ("toy_a", "toy_b"):
        metrics = json.loads((data / f"08_reporting/{system}/metrics.json").read_text())
        backends = metrics["test"]
        assert set(backends) == {"cosine", "cosine_crops", "fusion", "asnorm", "plda"}
        for values in backends.values():
            assert 0.0 <= values["eer"] <= 1.0 and "min_dcf_0.01" in values
        scores = pd.read_parquet(data / f"07_model_output/{system}/scores.parquet")
        assert len(scores) == metrics["test"]["cosine"]["n_trials"]
        assert (data / f"08_reporting/{system}/score_histogram.png").stat().st_size > 1000
    table = pd.read_csv(data / "08_reporting/comparison.csv")
    assert set(table["system"]) == {"toy_a", "toy_b"}
    assert len(table) == 2 * 5
    assert {"eer_percent", "min_dcf_0.01", "min_dcf_0.05"} <= set(table.columns)
    assert (data / "08_reporting/comparison.md").read_text().count("| toy_") == 10
    assert (data / "08_reporting/comparison_det.png").stat().st_size > 1000
    # Different weights give different scores: the table is not a copy of one system.
    a = pd.read_parquet(data / "07_model_output/toy_a/scores.parquet")["cosine"]
    b = pd.read_parquet(data / "07_model_output/toy_b/scores.parquet")["cosine"]
    assert not np.allclose(a, b)


def test_trial_list_naming_a_missing_utterance_fails_with_its_name(prepared_project: Path):
    trials = prepared_project / "data/05_model_input/test_trials.txt"
    lines = trials.read_text().splitlines()
    label, enrol, _ = lines[0].split()
    lines[0] = f"{label} {enrol} spk999/ghost.wav"
    trials.write_text("\n".join(lines) + "\n")
    with pytest.raises(EmbeddingError, match=r"spk999/ghost\.wav"):
        run_evaluation(prepared_project, ["toy_a"])


def test_judge_scores_a_checkpoint_on_any_folder_from_params(
    kedro_project: Path, tmp_path, run_kedro, tiny_ecapa_config
):
    from sv_kedro.audio.io import write_audio

    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    for speaker in range(3):
        tone = 150 + 60 * speaker
        for utt in range(3):
            t = np.arange(16000) / 16000
            wave = 0.3 * np.sin(2 * np.pi * tone * t) + 0.05 * rng.standard_normal(16000)
            write_audio(root / f"s{speaker}/u{utt}.wav", wave.astype(np.float32), 16000)
    write_checkpoint(kedro_project, "judged", 0, tiny_ecapa_config)
    params = {
        "judge": {
            "checkpoint": "data/06_models/judged/checkpoint.pt",
            "audio_root": str(root),
            "extraction": {"n_crops": 2, "crop_seconds": 0.5},
        }
    }
    run_kedro(kedro_project, ["judge"], params=params)
    metrics = json.loads((kedro_project / "data/08_reporting/judge/metrics.json").read_text())
    assert set(metrics) == {"cosine", "cosine_crops", "fusion", "judged"}
    assert metrics["cosine"]["n_trials"] > 0 and metrics["cosine"]["n_targets"] > 0
    # What was judged is recorded with the result (judge's outputs are not versioned).
    judged = metrics["judged"]
    assert judged["checkpoint"] == str(kedro_project / "data/06_models/judged/checkpoint.pt")
    assert judged["audio_root"] == [str(root)] and judged["trial_list"] == "generated"
    assert judged["trials"] == metrics["cosine"]["n_trials"] and judged["utterances"] == 9
    assert len(judged["trials_sha256"]) == 16


@pytest.mark.shared_data
def test_judge_on_arabic_speech_commands(
    kedro_project: Path, shared_data: Path, run_kedro, tiny_ecapa_config
):
    write_checkpoint(kedro_project, "judged", 0, tiny_ecapa_config)
    params = {
        "judge": {
            "checkpoint": "data/06_models/judged/checkpoint.pt",
            "audio_root": str(shared_data / "arabic_speech_commands"),
            "extraction": {"n_crops": 1, "crop_seconds": 0.5},
            "generated_trials": {"targets_per_utt": 1, "nontargets_per_utt": 2, "seed": 0},
        }
    }
    run_kedro(kedro_project, ["judge"], params=params)
    data = kedro_project / "data"
    metrics = json.loads((data / "08_reporting/judge/metrics.json").read_text())
    manifest = pd.read_parquet(data / "02_intermediate/judge/manifest.parquet")
    assert manifest["speaker"].nunique() == 30 and len(manifest) == 1200
    assert metrics["fusion"]["n_trials"] == 1200 * 3
    assert 0.0 < metrics["fusion"]["eer"] < 0.6


def test_cosine_backend_options_centre_on_the_cohort_and_drop_the_norm():
    from sv_kedro.pipelines.evaluation.nodes import score_trial_sets
    from sv_kedro.scoring.embedding_table import EmbeddingTable

    rng = np.random.default_rng(0)
    keys = [f"spk{k % 3}/u{k}" for k in range(9)]
    offset = 3.0 * np.ones(8, dtype=np.float32)  # a shared offset that centring removes
    full = EmbeddingTable(keys, (rng.standard_normal((9, 8)) + offset).astype(np.float32))
    crops = EmbeddingTable(keys, rng.standard_normal((9, 8)).astype(np.float32))
    cohort_keys = [f"train{k}" for k in range(12)]
    cohort = EmbeddingTable(cohort_keys, (rng.standard_normal((12, 8)) + offset).astype(np.float32))
    train = pd.DataFrame({"utt_id": cohort_keys, "speaker": [f"t{k % 4}" for k in range(12)]})
    pairs = [(a, b) for a in range(9) for b in range(a + 1, 9)]
    trials = pd.DataFrame(
        {
            "label": [int(a % 3 == b % 3) for a, b in pairs],
            "enrol": [keys[a] for a, _ in pairs],
            "test": [keys[b] for _, b in pairs],
        }
    )

    def scores(cosine: dict) -> pd.DataFrame:
        scoring = {"backends": ["cosine", "fusion"], "cosine": cosine}
        frame, _, _ = score_trial_sets(full, crops, cohort, train, trials, None, scoring)
        return frame

    plain, centred, dot = scores({}), scores({"mean_centre": True}), scores({"length_norm": False})
    a = full.vectors[[keys.index(k) for k in trials.enrol]].astype(np.float64)
    b = full.vectors[[keys.index(k) for k in trials.test]].astype(np.float64)
    mean = cohort.vectors.astype(np.float64).mean(axis=0)
    ca, cb = a - mean, b - mean
    expected = (ca * cb).sum(1) / np.linalg.norm(ca, axis=1) / np.linalg.norm(cb, axis=1)
    np.testing.assert_allclose(centred["cosine"], expected, atol=1e-5)
    assert np.abs(centred["cosine"] - plain["cosine"]).max() > 0.3  # the offset mattered
    np.testing.assert_allclose(dot["cosine"], (a * b).sum(1), rtol=1e-5)
    # Fusion keeps the paper's plain cosine whatever the cosine back-end does.
    np.testing.assert_array_equal(centred["fusion"], plain["fusion"])
    with pytest.raises(ValueError, match=r"scoring\.cosine: unknown key\(s\) \['whiten'\]"):
        scores({"whiten": True})


def test_shipped_scoring_configs_are_valid():
    import yaml

    from sv_kedro.pipelines.evaluation.nodes import scoring_options

    conf = Path(__file__).resolve().parents[2] / "conf"
    base = yaml.safe_load((conf / "base/parameters_evaluation.yml").read_text())["evaluation"]
    paper = yaml.safe_load((conf / "voxceleb/parameters_evaluation.yml").read_text())["evaluation"]
    assert scoring_options(base["scoring"]).main_backend == "fusion"
    assert scoring_options({**base["scoring"], **paper["scoring"]}).lda_dim == 200
    assert scoring_options(FAST_EVAL["evaluation"]["scoring"]).top_n == 3


@pytest.mark.parametrize(
    ("scoring", "message"),
    [
        ({"top_nn": 5}, r"evaluation\.scoring: unknown key\(s\) \['top_nn'\]"),
        ({"top_n": "abc"}, r"evaluation\.scoring\.top_n must be an integer, got 'abc'"),
        ({"lda_dim": "abc"}, r"evaluation\.scoring\.lda_dim must be an integer, got 'abc'"),
        (
            {"cohort_utts_per_speaker": "abc"},
            r"evaluation\.scoring\.cohort_utts_per_speaker must be an integer, got 'abc'",
        ),
        ({"pair_batch_size": "abc"}, r"evaluation\.scoring\.pair_batch_size must be an integer"),
        ({"lda_dim": -5}, r"evaluation\.scoring\.lda_dim must be >= 1 or null"),
        ({"top_n": 0}, r"evaluation\.scoring\.top_n must be >= 2, got 0"),
        ({"top_n": 1}, r"evaluation\.scoring\.top_n must be >= 2, got 1"),
        ({"pair_max_seconds": float("nan")}, r"pair_max_seconds must be a finite number > 0"),
        ({"pair_max_seconds": "inf"}, r"pair_max_seconds must be a finite number > 0"),
        ({"cohort_shard_dir": 5}, r"scoring\.cohort_shard_dir must be a folder path or null"),
        ({"backends": [["cosine"]]}, r"evaluation\.scoring\.backends must be a list"),
        (
            {"cosine": {"length_norm": "nope"}},
            r"evaluation\.scoring\.cosine\.length_norm must be true or false, got 'nope'",
        ),
        ({"main_backend": "fusoin"}, r"evaluation\.scoring\.main_backend: unknown 'fusoin'"),
        (
            {"main_backend": "fusion", "backends": ["cosine"]},
            r"evaluation\.scoring\.main_backend: 'fusion' is not among the selected "
            r"back-ends \['cosine'\]",
        ),
        ({"backends": "cosine"}, r"evaluation\.scoring\.backends must be a list"),
    ],
)
def test_bad_scoring_parameters_fail_before_extraction_naming_the_key(scoring, message):
    from sv_kedro.pipelines.evaluation.nodes import embed_cohort_utterances, embed_test_utterances

    # The check comes first in both embedding nodes (Kedro may run either first): an empty
    # checkpoint and manifest are never reached.
    with pytest.raises(ValueError, match=message):
        embed_cohort_utterances({}, pd.DataFrame(), {}, scoring)
    with pytest.raises(ValueError, match=message):
        embed_test_utterances({}, pd.DataFrame(), {}, scoring)


def test_comparison_keys_and_main_backend_are_checked():
    from sv_kedro.pipelines.evaluation.nodes import compare_systems

    with pytest.raises(
        ValueError, match=r"evaluation\.comparison: unknown key\(s\) \['main_backnd'\]"
    ):
        compare_systems({"main_backnd": "cosine"})
    with pytest.raises(ValueError, match=r"evaluation\.comparison\.main_backend: unknown 'fusoin'"):
        compare_systems({"main_backend": "fusoin"})


@pytest.mark.parametrize(
    ("extraction", "message"),
    [
        ({"n_crops": -1}, r"evaluation\.extraction: ExtractionConfig\.n_crops must be .*>= 0"),
        ({"n_crops": 0}, r"evaluation\.extraction\.n_crops must be >= 1"),
        ({"crop_seconds": 0}, r"evaluation\.extraction: ExtractionConfig\.crop_seconds"),
        (
            {"crop_seconds": 4.0, "max_seconds": 2.0},
            r"evaluation\.extraction: .*max_seconds \(2\.0\) is shorter than crop_seconds",
        ),
    ],
)
def test_bad_extraction_settings_stop_both_embedding_nodes_before_extraction(extraction, message):
    from sv_kedro.pipelines.evaluation.nodes import embed_cohort_utterances, embed_test_utterances

    # The cohort is embedded with n_crops 0, which used to hide the test settings' crops
    # until after the cohort's extraction: an empty checkpoint is never reached.
    with pytest.raises(ValueError, match=message):
        embed_cohort_utterances({}, pd.DataFrame(), extraction, {})
    with pytest.raises(ValueError, match=message):
        embed_test_utterances({}, pd.DataFrame(), extraction, {})


def _scoring_inputs():
    from sv_kedro.scoring.embedding_table import EmbeddingTable

    rng = np.random.default_rng(1)
    keys = [f"spk{k % 3}/u{k}" for k in range(9)]
    full = EmbeddingTable(keys, rng.standard_normal((9, 8)).astype(np.float32))
    crops = EmbeddingTable(keys, rng.standard_normal((9, 8)).astype(np.float32))
    cohort_keys = [f"train{k}" for k in range(24)]
    cohort = EmbeddingTable(cohort_keys, rng.standard_normal((24, 8)).astype(np.float32))
    train = pd.DataFrame({"utt_id": cohort_keys, "speaker": [f"t{k % 6}" for k in range(24)]})
    pairs = [(a, b) for a in range(9) for b in range(a + 1, 9)]
    trials = pd.DataFrame(
        {
            "label": [int(a % 3 == b % 3) for a, b in pairs],
            "enrol": [keys[a] for a, _ in pairs],
            "test": [keys[b] for _, b in pairs],
        }
    )
    return full, crops, cohort, train, trials


@pytest.mark.parametrize(
    ("table", "row", "value", "message"),
    [
        ("full", 4, 0.0, r"test \(full-utterance\) embeddings: 1 embedding\(s\) are all zeros"),
        ("crops", 4, np.nan, r"test \(crop\) embeddings: 1 embedding\(s\) contain NaN"),
        ("cohort", 7, np.nan, r"cohort \(training\) embeddings: .*NaN or inf, e\.g\. \['train7'\]"),
    ],
)
def test_unusable_embeddings_are_named_before_scoring(table, row, value, message):
    from sv_kedro.pipelines.evaluation.nodes import score_trial_sets
    from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable

    inputs = dict(zip(("full", "crops", "cohort"), _scoring_inputs()[:3], strict=True))
    vectors = inputs[table].vectors.copy()
    vectors[row] = value
    inputs[table] = EmbeddingTable(inputs[table].keys_, vectors)
    _, _, _, train, trials = _scoring_inputs()
    with pytest.raises(EmbeddingError, match=message) as caught:
        score_trial_sets(*inputs.values(), train, trials, None, {"lda_dim": 4, "top_n": 5})
    if table != "cohort":
        assert "spk1/u4" in str(caught.value)


def test_valid_inputs_score_every_backend_and_a_bad_label_names_set_and_backend():
    from sv_kedro.pipelines.evaluation.nodes import score_trial_sets

    full, crops, cohort, train, trials = _scoring_inputs()
    scoring = {"lda_dim": 4, "top_n": 5}
    scores, metrics, _ = score_trial_sets(full, crops, cohort, train, trials, None, scoring)
    assert set(metrics["test"]) == {"cosine", "cosine_crops", "fusion", "asnorm", "plda"}
    assert np.isfinite(scores[["cosine", "asnorm", "plda"]].to_numpy()).all()
    bad = trials.assign(label=trials["label"].where(trials.index != 2, 2))
    with pytest.raises(
        ValueError, match=r"trial set 'test', back-end 'cosine': labels must be 0 .* \[2\]"
    ):
        score_trial_sets(full, crops, cohort, train, bad, None, scoring)


def test_a_system_left_out_of_the_det_plot_is_said(caplog):
    from sv_kedro.pipelines.evaluation.nodes import score_trial_sets

    full, crops, cohort, train, trials = _scoring_inputs()
    outputs = {}
    for system, backends in (("a", ["cosine", "fusion"]), ("b", ["cosine"])):
        scoring = {"backends": backends, "main_backend": "cosine"}
        scores, metrics, _ = score_trial_sets(full, crops, cohort, train, trials, None, scoring)
        outputs[f"{system}__scores"], outputs[f"{system}__metrics"] = scores, metrics
    from sv_kedro.pipelines.evaluation.nodes import compare_systems

    with caplog.at_level("WARNING"):
        table, _, figure = compare_systems({"main_backend": "fusion"}, **outputs)
    assert "leaves out ['b']" in caplog.text
    assert len(figure.axes[0].get_legend().get_texts()) == 1
    assert set(table["system"]) == {"a", "b"}
