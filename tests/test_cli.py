"""The project's Kedro commands (``sv_kedro.cli``): bad options are refused with a usage error."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sv_kedro.cli import cli


def test_sweep_refuses_a_params_item_without_equals():
    # Refused before any project is read: no Kedro project is needed here.
    result = CliRunner().invoke(cli, ["sweep", "pooling_study", "--dry-run", "--params", "garbage"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--params': 'garbage' is not of the form key=value" in result.output
    with_one_good = ["--params", "training.max_steps=20,garbage"]
    result = CliRunner().invoke(cli, ["check-setup", "--systems", "xvector", *with_one_good])
    assert result.exit_code == 2 and "'garbage' is not of the form key=value" in result.output


def test_sweep_max_runs_must_be_at_least_one():
    result = CliRunner().invoke(cli, ["sweep", "pooling_study", "--max-runs", "0"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--max-runs': 0 is not in the range x>=1" in result.output


def test_an_unknown_sweep_is_a_usage_error_listing_the_defined_ones(kedro_project: Path):
    result = CliRunner().invoke(cli, ["sweep", "nonexistent", "--dry-run"])
    assert result.exit_code == 1, result.output
    assert "Error: no sweep 'nonexistent' under 'sweeps'" in result.output
    assert "'pooling_study'" in result.output  # the defined sweeps are listed
    assert "Traceback" not in result.output
