"""ssl_pseudo_labeling through real Kedro sessions on the generated base corpus.

One module-scoped run (data_engineering, then ssl_pseudo_labeling with the shipped base
parameters) in a throw-away copy of the project; the acceptance figures are read from that
run's own outputs. The external-embeddings variant and the bad-embedding checks reuse the
run's manifests.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from sv_kedro.datasets import EmbeddingsDataset
from sv_kedro.pipelines.evaluation import nodes as evaluation_nodes
from sv_kedro.pipelines.ssl_pseudo_labeling import create_pipeline, evaluated_systems
from sv_kedro.pipelines.ssl_pseudo_labeling import nodes as ssl_nodes
from sv_kedro.pipelines.ssl_pseudo_labeling.nodes import (
    deep_merge,
    fine_tune_first_round_from_scratch,
    fine_tune_round,
    pseudo_labeled_manifest,
)
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable

THREADS = {"ssl_pseudo_labeling": {"run": {"torch_threads": 1}}}


def _run(project: Path, pipeline: str, params: dict[str, Any], **options: Any) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=[pipeline], **options)


@pytest.fixture(scope="module")
def ssl_project(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("ssl") / "project"
    project.mkdir()
    shutil.copytree(project_root / "conf", project / "conf")
    shutil.copy(project_root / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        _run(project, "data_engineering", {})
        _run(project, "ssl_pseudo_labeling", THREADS)
    return project


def _health(project: Path, stage: str) -> dict[str, float]:
    path = project / f"data/08_reporting/ssl_pseudo_labeling.{stage}/cluster_health.json"
    return json.loads(path.read_text())


def test_pipeline_structure_and_registered_systems() -> None:
    three = create_pipeline(iterations=3)
    names = {n.name for n in three.nodes}
    assert "ssl_pseudo_labeling.iter_3.fine_tune_on_pseudo_labels" in names
    assert "ssl_pseudo_labeling.lmft.large_margin_fine_tune" in names
    # Each round's classifier starts at prototypes of the embeddings its labels came from.
    inputs = {n.name: set(n.inputs) for n in three.nodes}
    assert (
        "ssl_pseudo_labeling.initial_embeddings"
        in inputs["ssl_pseudo_labeling.iter_1.fine_tune_on_pseudo_labels"]
    )
    assert (
        "ssl_pseudo_labeling.iter_3.train_embeddings"
        in inputs["ssl_pseudo_labeling.lmft.large_margin_fine_tune"]
    )
    assert evaluated_systems(iterations=2) == [
        "ssl_pseudo_labeling.dino",
        "ssl_pseudo_labeling.iter_1",
        "ssl_pseudo_labeling.iter_2",
        "ssl_pseudo_labeling.lmft",
    ]
    external = create_pipeline("external", iterations=1)
    assert "ssl_pseudo_labeling.external_embeddings" in external.inputs()
    assert not any("dino" in n.name for n in external.nodes)
    with pytest.raises(ValueError, match="initial_source"):
        create_pipeline("pretrained")


def test_n_iterations_parameter_shapes_the_registered_pipelines(kedro_project: Path) -> None:
    from kedro.framework.project import pipelines

    from sv_kedro.pipelines.ssl_pseudo_labeling import configure_iterations

    def stages_for(params: dict[str, Any]) -> set[str]:
        bootstrap_project(kedro_project)
        with KedroSession.create(project_path=kedro_project, runtime_params=params) as session:
            session.load_context()
            names = {n.name for n in pipelines["ssl_pseudo_labeling"].nodes}
        return {name.split(".")[1] for name in names if ".iter_" in name}

    try:
        assert stages_for({}) == {"iter_1", "iter_2"}  # conf/base
        assert stages_for({"ssl_pseudo_labeling": {"n_iterations": 3}}) == {
            "iter_1",
            "iter_2",
            "iter_3",
        }
        assert stages_for({"ssl_pseudo_labeling": {"n_iterations": 1}}) == {"iter_1"}
        with pytest.raises(ValueError, match=r"ssl_pseudo_labeling\.n_iterations"):
            stages_for({"ssl_pseudo_labeling": {"n_iterations": 0}})
    finally:
        configure_iterations(2)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rounds": 3}, r"ssl_pseudo_labeling: unknown key\(s\) \['rounds'\]"),
        ({"run": {"restart": False}}, r"ssl_pseudo_labeling.run: unknown key\(s\) \['restart'\]"),
        ({"dino": {"network": "teacher"}}, r"ssl_pseudo_labeling.dino: unknown key"),
        ({"dino": {"export": "studnet"}}, r"dino.export must be one of \('teacher', 'student'\)"),
        ({"finetune": {"l2sp": 0.1}}, r"ssl_pseudo_labeling.finetune: unknown key\(s\) \['l2sp'\]"),
        ({"lmft": {"head_start": "fresh"}}, r"ssl_pseudo_labeling.lmft: unknown key"),
        # Values the rounds and LMFT would refuse only when their node runs, after DINO,
        # extraction and clustering.
        (
            {"lmft": {"training": {"lr": -1}}},
            r"ssl_pseudo_labeling.lmft \(finetune with lmft's overrides\): training.lr .* > 0",
        ),
        (
            {"finetune": {"training": {"epochs": "abc"}}},
            r"ssl_pseudo_labeling.finetune: training.epochs must be an integer, got 'abc'",
        ),
        (
            {"finetune": {"model": {"ecapa": {"channels": 0}}}},
            r"ssl_pseudo_labeling.finetune: model.ecapa.channels must be >= 1",
        ),
        (
            {"finetune": {"gate": {"lc_confidence": 2}}},
            r"ssl_pseudo_labeling.finetune: gate.lc_confidence must be within \[0, 1\]",
        ),
        ({"lmft": {"loss": {"margin": "wide"}}}, r"ssl_pseudo_labeling.lmft .*'margin' must be"),
        (
            {"finetune": {"data": {"batch_size": "many"}}},
            r"ssl_pseudo_labeling.finetune: data.batch_size must be an integer",
        ),
        (
            {"finetune": {"init_from_previous": "nope"}},
            r"ssl_pseudo_labeling.finetune: init_from_previous must be true or false",
        ),
        (
            {"lmft": {"classifier_start": "proto"}},
            r"ssl_pseudo_labeling.lmft .*classifier_start must be one of",
        ),
    ],
)
def test_the_section_refuses_misspelt_keys_and_bad_values_when_the_session_starts(
    kedro_project: Path, section: dict[str, Any], message: str
) -> None:
    # Keys that resemble no configured key pass the --params guard, so the section's own
    # check must catch them (a misspelt conf/local file takes the same path).
    bootstrap_project(kedro_project)
    params = {"ssl_pseudo_labeling": section}
    with pytest.raises(ValueError, match=message):
        with KedroSession.create(project_path=kedro_project, runtime_params=params) as session:
            session.load_context()


def _stage_section(k2: object, finetune_batch: int, lmft_batch: int | None = None) -> dict:
    section: dict[str, Any] = {
        "clustering": {"k1": None, "k2": k2},
        "finetune": {"data": {"batch_size": finetune_batch, "crop_seconds": 2.0}},
        "lmft": {"data": {"crop_seconds": 2.5}},
    }
    if lmft_batch is not None:
        section["lmft"]["data"]["batch_size"] = lmft_batch
    return section


def test_a_fixed_k2_below_a_round_s_batch_size_is_refused_when_the_session_starts() -> None:
    from sv_kedro.pipelines.ssl_pseudo_labeling.settings import check_stage_settings

    with pytest.raises(
        ValueError,
        match=r"clustering\.k2=8: 8 pseudo-speakers, fewer than "
        r"ssl_pseudo_labeling\.finetune\.data\.batch_size=16",
    ):
        check_stage_settings(_stage_section(8, 16))
    # LMFT's batches come from finetune's data with lmft's overrides.
    with pytest.raises(ValueError, match=r"ssl_pseudo_labeling\.lmft\.data\.batch_size=32"):
        check_stage_settings(_stage_section(20, 16, lmft_batch=32))
    check_stage_settings(_stage_section(16, 16))
    check_stage_settings(_stage_section("auto", 16))  # the round checks the chosen count
    pairs = _stage_section(8, 16)
    pairs["finetune"]["data"]["pairs"] = True  # pair batches do not need distinct speakers
    check_stage_settings(pairs)
    with pytest.raises(ValueError, match=r"ssl_pseudo_labeling\.clustering\.linkage"):
        check_stage_settings({"clustering": {"k1": None, "k2": 4, "linkage": "single"}})


def test_shipped_environments_pass_the_section_check(kedro_project: Path) -> None:
    from sv_kedro.pipelines.ssl_pseudo_labeling.pipeline import check_section

    bootstrap_project(kedro_project)
    for env in (None, "voxceleb", "folder"):
        with KedroSession.create(project_path=kedro_project, env=env) as session:
            check_section(session.load_context().params["ssl_pseudo_labeling"])


def test_training_input_never_holds_true_speakers() -> None:
    manifest = pd.DataFrame(
        {
            "utt_id": ["a", "b"],
            "speaker": ["s1", "s2"],
            "path": ["/a", "/b"],
            "speaker_index": [0, 1],
        }
    )
    labels = pd.DataFrame({"utt_id": ["b", "a"], "speaker_index": [0, 0]})
    training = pseudo_labeled_manifest(manifest, labels)
    assert training["speaker"].tolist() == ["pseudo00000", "pseudo00000"]
    assert training["speaker_index"].tolist() == [0, 0]
    assert "true_speaker" not in training.columns
    with pytest.raises(ValueError, match="'a'"):
        pseudo_labeled_manifest(manifest, labels.iloc[:1])


def _tight_speakers(
    n_speakers: int, per_speaker: int, seed: int
) -> tuple[EmbeddingTable, pd.DataFrame]:
    """Embeddings of ``n_speakers`` tight blobs (``per_speaker`` utterances each) and their
    manifest."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, 16))
    speaker = np.repeat(np.arange(n_speakers), per_speaker)
    vectors = (centres[speaker] + 0.05 * rng.normal(size=(speaker.size, 16))).astype(np.float32)
    utts = [f"u{i:02d}" for i in range(speaker.size)]
    manifest = pd.DataFrame({"utt_id": utts, "speaker": [f"s{k}" for k in speaker]})
    return EmbeddingTable(utts, vectors), manifest


def test_null_k1_clusters_every_utterance_without_kmeans() -> None:
    embeddings, manifest = _tight_speakers(4, 6, seed=0)
    clustering = {"k1": None, "k2": 4, "seed": 0}
    table, health, _ = ssl_nodes.cluster_training_embeddings(embeddings, manifest, clustering)
    assert health["k1"] == 24.0
    assert table["kmeans_label"].tolist() == list(range(24))
    assert health["nmi"] == pytest.approx(1.0)


def test_auto_k2_picks_the_pseudo_speaker_count_and_reports_it() -> None:
    embeddings, manifest = _tight_speakers(6, 8, seed=1)
    clustering = {"k1": None, "k2": "auto", "k2_search": {"min": 2, "max": 20}, "seed": 0}
    table, health, _ = ssl_nodes.cluster_training_embeddings(embeddings, manifest, clustering)
    assert health["k2"] == 6.0 and table["pseudo_label"].nunique() == 6
    assert health["nmi"] == pytest.approx(1.0)
    assert 0.5 < health["k2_silhouette"] <= 1.0
    clustering["k2_search"] = {"min": 2, "maximum": 20}
    with pytest.raises(ValueError, match=r"k2_search: unknown key\(s\) \['maximum'\]"):
        ssl_nodes.cluster_training_embeddings(embeddings, manifest, clustering)


def test_unknown_clustering_key_is_named_before_clustering() -> None:
    utts = ["a", "b", "c"]
    vectors = np.eye(3, dtype=np.float32)
    manifest = pd.DataFrame({"utt_id": utts, "speaker": ["s0", "s0", "s1"]})
    clustering = {"k1": None, "k2": 2, "whiten": True, "whitten": True}
    embeddings = EmbeddingTable(utts, vectors)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['whitten'\]"):
        ssl_nodes.cluster_training_embeddings(embeddings, manifest, clustering)
    del clustering["whitten"]
    # Three whitened vectors would all be equally far apart: they are clustered as given.
    table, _, _ = ssl_nodes.cluster_training_embeddings(embeddings, manifest, clustering)
    assert table["pseudo_label"].nunique() == 2
    for key, value, message in [
        ("k2", "abc", r"clustering.k2 must be an integer or 'auto', got 'abc'"),
        ("n_iter", "abc", r"clustering.n_iter must be an integer"),
        ("whiten", "nope", r"clustering.whiten must be true or false, got 'nope'"),
    ]:
        with pytest.raises(ValueError, match=message):
            ssl_nodes.cluster_training_embeddings(embeddings, manifest, {**clustering, key: value})


def test_counts_the_utterances_cannot_hold_are_refused_not_clamped() -> None:
    embeddings, manifest = _tight_speakers(4, 6, seed=0)
    # Clamped, k2 = 100 made each of the 24 utterances its own pseudo-speaker.
    with pytest.raises(ValueError, match=r"clustering\.k2=100 pseudo-speakers .* only 24"):
        ssl_nodes.cluster_training_embeddings(embeddings, manifest, {"k1": None, "k2": 100})
    with pytest.raises(ValueError, match=r"clustering\.k2=12 is more than .*clustering\.k1=8"):
        ssl_nodes.cluster_training_embeddings(embeddings, manifest, {"k1": 8, "k2": 12})
    auto = {"k1": None, "k2": "auto", "k2_search": {"min": 10, "max": 5}}
    with pytest.raises(ValueError, match=r"k2_search\.max=5 is below"):
        ssl_nodes.cluster_training_embeddings(embeddings, manifest, auto)
    _, health, _ = ssl_nodes.cluster_training_embeddings(embeddings, manifest, {"k1": 500, "k2": 4})
    assert health["k1"] == 24.0 and health["nmi"] == pytest.approx(1.0)


def test_a_round_refuses_fewer_pseudo_speakers_than_a_batch_before_training(
    tmp_path: Path,
) -> None:
    manifest = pd.DataFrame({"utt_id": list("abcd"), "speaker": ["s1"] * 4, "path": ["/x"] * 4})
    labels = pd.DataFrame({"utt_id": list("abcd"), "speaker_index": [0, 0, 1, 2]})
    finetune = {"model": {}, "loss": {}, "training": {}, "data": {"batch_size": "16"}}
    with pytest.raises(
        ValueError,
        match=r"iter_1's pseudo-labels .*: 3 pseudo-speakers, fewer than "
        r"ssl_pseudo_labeling\.finetune\.data\.batch_size=16",
    ):
        fine_tune_first_round_from_scratch(labels, manifest, finetune, {"work_dir": str(tmp_path)})
    assert not any(tmp_path.iterdir())  # refused before a training folder was made


def test_unknown_classifier_start_is_named_before_any_training(tmp_path: Path) -> None:
    manifest = pd.DataFrame({"utt_id": ["a"], "speaker": ["s1"], "path": ["/a"]})
    labels = pd.DataFrame({"utt_id": ["a"], "speaker_index": [0]})
    finetune = {"classifier_start": "centroids", "model": {}, "loss": {}, "training": {}}
    with pytest.raises(ValueError, match=r"iter_1: classifier_start .* 'centroids'"):
        fine_tune_first_round_from_scratch(labels, manifest, finetune, {"work_dir": str(tmp_path)})
    assert not any(tmp_path.iterdir())


def test_round_start_picks_where_later_rounds_begin(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, Any, bool | None]] = []

    def record(labels, manifest, previous, config, run, stage, embeddings=None):
        started.append((stage, previous, config.get("init_from_previous")))

    monkeypatch.setattr(ssl_nodes, "_fine_tune", record)
    previous, initial = {"from": "iter_1"}, {"from": "dino"}

    def round_(stage: str, **finetune: Any) -> tuple[str, Any, bool | None]:
        fine_tune_round(None, None, None, previous, finetune, {}, stage, initial)
        return started[-1]

    assert round_("iter_2") == ("iter_2", previous, True)  # default: continue
    assert round_("iter_2", round_start="initial") == ("iter_2", initial, None)
    # Round 1 always starts from its previous stage (the DINO encoder itself).
    assert round_("iter_1", round_start="initial")[1] is previous
    # With init_from_previous false (voxceleb: WavLM-Base+), "initial" keeps it false.
    assert round_("iter_3", round_start="initial", init_from_previous=False)[2] is False
    with pytest.raises(ValueError, match=r"iter_2: round_start .* 'first'"):
        round_("iter_2", round_start="first")
    with pytest.raises(ValueError, match=r"iter_2: classifier_start 'prototypes' needs"):
        round_("iter_2", round_start="initial", classifier_start="prototypes")
    # The pipeline feeds rounds 2.. the DINO checkpoint; LMFT always continues.
    inputs = {n.name: set(n.inputs) for n in create_pipeline(iterations=3).nodes}
    dino = "ssl_pseudo_labeling.dino.checkpoint"
    for stage in ("iter_2", "iter_3"):
        assert dino in inputs[f"ssl_pseudo_labeling.{stage}.fine_tune_on_pseudo_labels"]
    assert dino not in inputs["ssl_pseudo_labeling.lmft.large_margin_fine_tune"]
    external = {n.name: set(n.inputs) for n in create_pipeline("external", iterations=2).nodes}
    assert not any(dino in names for names in external.values())


def test_every_stage_pays_its_way(ssl_project: Path) -> None:
    summary = pd.read_csv(ssl_project / "data/08_reporting/ssl_summary.csv").set_index("stage")
    assert summary.index.tolist() == ["initial", "iter_1", "iter_2", "lmft"]
    assert (ssl_project / "data/08_reporting/ssl_summary.md").read_text().count("| iter_") == 2
    nmi = {stage: _health(ssl_project, stage)["nmi"] for stage in summary.index}
    assert summary.loc["iter_1", "nmi"] == pytest.approx(nmi["iter_1"], abs=1e-4)
    # Round 1 beats the DINO embeddings' own clustering; later rounds do not fall.
    assert nmi["iter_1"] > nmi["initial"]
    assert nmi["iter_2"] >= nmi["iter_1"]
    # The final (LMFT) model verifies better than the initial (DINO) embeddings.
    assert summary.loc["lmft", "eer_percent"] < summary.loc["initial", "eer_percent"]
    for stage in ("dino", "iter_1", "iter_2", "lmft"):
        metrics = ssl_project / f"data/08_reporting/ssl_pseudo_labeling.{stage}/metrics.json"
        assert json.loads(metrics.read_text())["test"]["fusion"]["eer"] * 100 == pytest.approx(
            summary.loc["initial" if stage == "dino" else stage, "eer_percent"], abs=1e-3
        )


def test_stage_outputs_exist_and_labels_are_aligned(ssl_project: Path) -> None:
    train = pd.read_parquet(ssl_project / "data/05_model_input/train_manifest.parquet")
    for stage in ("initial", "iter_1", "iter_2", "lmft"):
        folder = ssl_project / f"data/05_model_input/ssl_pseudo_labeling.{stage}"
        table = pd.read_parquet(folder / "pseudo_labels.parquet")
        assert table["utt_id"].tolist() == train["utt_id"].tolist()
        # The stage's AS-norm / PLDA cohort is grouped by its pseudo-labels, not by speakers.
        cohort = pd.read_parquet(folder / "cohort_manifest.parquet")
        assert cohort["utt_id"].tolist() == train["utt_id"].tolist()
        assert cohort["speaker_index"].tolist() == table["speaker_index"].tolist()
        assert not set(cohort["speaker"]) & set(train["speaker"])
        assert table["pseudo_label"].nunique() == _health(ssl_project, stage)["n_clusters"] <= 40
        assert (
            (ssl_project / f"data/08_reporting/ssl_pseudo_labeling.{stage}/cluster_sizes.png")
            .stat()
            .st_size
        )
    for stage in ("iter_1", "iter_2", "lmft"):
        report = ssl_project / f"data/08_reporting/ssl_pseudo_labeling.{stage}"
        assert (report / "loss_gate.png").stat().st_size > 0
        assert len(pd.read_csv(report / "training_metrics.csv")) > 0
        assert (ssl_project / f"data/06_models/ssl_pseudo_labeling.{stage}/checkpoint.pt").is_file()
    lmft = torch.load(
        ssl_project / "data/06_models/ssl_pseudo_labeling.lmft/checkpoint.pt", weights_only=True
    )
    assert lmft["architecture"] == "ecapa_tdnn"
    gate = lmft["training_state"]["loss_gate"]
    iter_2 = torch.load(
        ssl_project / "data/06_models/ssl_pseudo_labeling.iter_2/checkpoint.pt", weights_only=True
    )
    history = iter_2["training_state"]["loss_gate"]["task"]["gate"]["history"]
    assert len(history) == 7 and gate["task"].get("gate") is None


def _initial_vectors(project: Path) -> EmbeddingTable:
    return EmbeddingsDataset(
        filepath=str(project / "data/04_feature/ssl_pseudo_labeling/initial_embeddings")
    ).load()


def _external_params(path: Path, epochs: int = 1) -> dict[str, Any]:
    return {
        "ssl_external_embeddings": str(path),
        "ssl_pseudo_labeling": {
            "run": {"torch_threads": 1, "work_dir": "data/06_models/ssl_external_work"},
            "finetune": {"training": {"epochs": epochs}},
        },
    }


def test_external_embeddings_path_runs_from_a_published_pt_file(
    ssl_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ssl_project)
    table = _initial_vectors(ssl_project)
    published = ssl_project / "external" / "vox2_dev_embeddings.pt"
    published.parent.mkdir()
    torch.save({key: torch.from_numpy(table[key].copy()) for key in table}, published)
    _run(
        ssl_project,
        "ssl_pseudo_labeling_external",
        _external_params(published),
        to_nodes=["ssl_pseudo_labeling.iter_1.cluster_training_embeddings"],
    )
    stored = _initial_vectors(ssl_project)
    np.testing.assert_allclose(stored.vectors, table.vectors)
    health = _health(ssl_project, "iter_1")
    assert 0.0 <= health["nmi"] <= 1.0 and health["n_clusters"] >= 2
    checkpoint = ssl_project / "data/06_models/ssl_pseudo_labeling.iter_1/checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["training_state"]["epoch"] == 1


def _bad_run(project: Path, path: Path) -> None:
    _run(
        project,
        "ssl_pseudo_labeling_external",
        _external_params(path),
        to_nodes=["ssl_pseudo_labeling.check_external_embeddings"],
    )


@pytest.mark.parametrize("fault", ["nan", "missing", "misnamed", "identical"])
def test_bad_pt_embeddings_stop_the_run_naming_the_key(
    ssl_project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fault: str
) -> None:
    monkeypatch.chdir(ssl_project)
    table = _initial_vectors(ssl_project)
    mapping = {key: torch.from_numpy(table[key].copy()) for key in table}
    victim = table.keys_[5]
    pattern = re.escape(victim)
    if fault == "nan":
        mapping[victim][3] = float("nan")
    elif fault == "missing":
        del mapping[victim]
    elif fault == "misnamed":  # absolute paths: nothing matches, and the error says why
        mapping = {f"/corpus/{key}": value for key, value in mapping.items()}
        pattern = r"have no embedding.*keys must be utt_ids"
    else:
        mapping = {key: mapping[victim].clone() for key in mapping}
        pattern = r"external embeddings: all \d+ embeddings are the same vector"
    path = tmp_path / f"{fault}.pt"
    torch.save(mapping, path)
    with pytest.raises(EmbeddingError, match=pattern):
        _bad_run(ssl_project, path)


def test_embeddings_of_other_utterances_are_left_out(
    ssl_project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A published file covers the whole corpus; the validation speakers are not trained on.
    monkeypatch.chdir(ssl_project)
    table = _initial_vectors(ssl_project)
    mapping = {key: torch.from_numpy(table[key].copy()) for key in table}
    mapping["id99999/unknown/00001.wav"] = mapping[table.keys_[0]].clone()
    path = tmp_path / "superset.pt"
    torch.save(mapping, path)
    _bad_run(ssl_project, path)
    stored = _initial_vectors(ssl_project)
    assert stored.keys_ == table.keys_
    np.testing.assert_allclose(stored.vectors, table.vectors)


def test_duplicate_keys_in_compact_embeddings_stop_the_run(
    ssl_project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ssl_project)
    table = _initial_vectors(ssl_project)
    folder = tmp_path / "compact"
    EmbeddingsDataset(filepath=str(folder)).save(table)
    keys = (folder / "keys.txt").read_text().splitlines()
    duplicated = keys[0]
    keys[1] = duplicated
    (folder / "keys.txt").write_text("\n".join(keys) + "\n")
    with pytest.raises(Exception, match=duplicated.replace(".", r"\.")) as caught:
        _bad_run(ssl_project, folder)
    assert "duplicate" in str(caught.value)


@pytest.mark.slow
def test_dino_and_a_pseudo_label_round_train_from_shards_alone(
    kedro_project: Path, tmp_path: Path
) -> None:
    """data_engineering writes shards labelled with the corpus's speakers; DINO (babble
    included), the clustering input's extraction, a pseudo-label round (the shipped base
    settings, shortened) and the evaluation's AS-norm/PLDA cohort then read them while the
    training audio is moved away. The round's labels come from its manifest: the 8 true
    speakers stored in the shards mean nothing to its 3-way classifier."""
    project = kedro_project
    corpus = {
        "data_engineering": {
            "synthetic": {
                "corpus": {
                    "n_speakers": 10,
                    "utterances_per_speaker": 8,
                    "min_duration_s": 1.2,
                    "max_duration_s": 1.8,
                }
            },
            "split": {"test_speakers": 2, "validation_ratio": 0.25},
            "trials": {"targets_per_utt": 2, "nontargets_per_utt": 4},
            "validation_pairs": {"n_pairs": 16},
            "shards": {"enabled": True, "utterances_per_shard": 8},
        }
    }
    _run(project, "data_engineering", corpus)
    index = json.loads((project / "data/04_feature/train_shard_index.json").read_text())
    train = pd.read_parquet(project / "data/05_model_input/train_manifest.parquet")
    assert train["speaker"].nunique() == 8 and index["num_utterances"] == len(train)
    shipped = yaml.safe_load(
        (project / "conf/base/parameters_ssl_pseudo_labeling.yml").read_text()
    )["ssl_pseudo_labeling"]
    data = {
        "shard_dir": index["out_dir"],
        "shuffle_buffer": 16,
        "batch_size": 8,
        # Babble reads its other utterances' crops from the shards too.
        "augmentation": {"weights": {"none": 1, "reverb": 1, "babble": 2}, "simulated_rirs": 4},
    }
    dino = deep_merge(shipped["dino"], {"training": {"epochs": 1}, "data": data})
    finetune = deep_merge(shipped["finetune"], {"training": {"epochs": 2}, "data": data})
    run = {"work_dir": str(tmp_path / "work"), "resume": True, "torch_threads": 1}
    pseudo = pd.DataFrame({"utt_id": train["utt_id"], "speaker_index": np.arange(len(train)) % 3})
    moved = [Path(project, path) for path in train["path"]]
    for path in moved:
        path.rename(path.with_name(path.name + ".away"))
    try:
        encoder, dino_metrics = ssl_nodes.train_dino_encoder(train, dino, run)
        extraction = {**shipped["extraction"], "device": "cpu", "shard_dir": index["out_dir"]}
        clustering_input = ssl_nodes.embed_training_utterances(encoder, train, extraction, run)
        checkpoint, metrics, _ = fine_tune_round(
            pseudo, None, train, encoder, finetune, run, "iter_1"
        )
        cohort_manifest = train.assign(speaker=pseudo["speaker_index"].map("pseudo{}".format))
        scoring = {"cohort_utts_per_speaker": 5, "cohort_shard_dir": index["out_dir"]}
        # The node takes evaluation.extraction, whose test embeddings need crops (the
        # cohort itself is embedded without them).
        evaluation_extraction = {**extraction, "shard_dir": None, "n_crops": 1}
        cohort = evaluation_nodes.embed_cohort_utterances(
            checkpoint, cohort_manifest, evaluation_extraction, scoring
        )
    finally:
        for path in moved:
            path.with_name(path.name + ".away").rename(path)
    assert np.isfinite(dino_metrics["loss"].dropna()).all()
    assert clustering_input.keys_ == train["utt_id"].tolist()
    assert np.isfinite(clustering_input.vectors).all()
    # 64 utterances in shards of 8, full batches of 8: up to 8 steps an epoch.
    assert 0 < encoder["training_state"]["step"] <= 8
    assert checkpoint["model_config"]["n_classes"] == 3
    assert checkpoint["training_state"]["step"] > encoder["training_state"]["step"]
    assert np.isfinite(metrics["loss"].dropna()).all()
    # 5 utterances of each of the 3 pseudo-speakers, the first by utt_id.
    assert len(cohort.keys_) == 15 and np.isfinite(cohort.vectors).all()
    assert set(cohort.keys_) == set(
        cohort_manifest.sort_values("utt_id").groupby("speaker").head(5)["utt_id"]
    )
