"""Project settings: https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment overrides single keys of a parameter section, not the whole section:
    # conf/voxceleb only lists what differs from conf/base.
    "merge_strategy": {"parameters": "soft", "catalog": "soft"},
    # Kedro resolves ${oc.env:...} only in credentials; conf/voxceleb reads data locations
    # from the environment (${oc.env:VOXCELEB_ROOT,/data/voxceleb}) in parameters too.
    "custom_resolvers": {"oc.env": oc.env},
}

# kedro-mlflow registers its hooks in every session once installed; tracking is turned on
# only where asked for (the `mlflow` environment), not in every run and test.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

# ParameterCheckHook: a --params key that resembles a configured key but is not one (a typo),
# or an unknown key in the ssl_pseudo_labeling section, stops the run before anything is
# read; see sv_kedro/hooks.py.
# PipelineShapeHook: the number of self-supervised rounds is a parameter
# (ssl_pseudo_labeling.n_iterations) that decides which pipelines exist; see sv_kedro/hooks.py.
# MissingInputsHook: a pipeline whose stored inputs do not exist yet (evaluation before any
# training) stops before it starts, naming the pipeline that writes each of them.
# SpeakerVerificationMlflowHook wraps kedro-mlflow's and is on only where an mlflow.yml is
# configured (conf/mlflow: `kedro run --env mlflow`); see sv_kedro/tracking.py.
from sv_kedro.hooks import (  # noqa: E402
    MissingInputsHook,
    ParameterCheckHook,
    PipelineShapeHook,
)
from sv_kedro.tracking import SpeakerVerificationMlflowHook  # noqa: E402

HOOKS = (
    ParameterCheckHook(),
    PipelineShapeHook(),
    MissingInputsHook(),
    SpeakerVerificationMlflowHook(),
)
