"""Hooks that check the session's ``--params`` and shape the pipelines from its parameters.

:class:`ParameterCheckHook` refuses a ``--params`` key that the configuration lacks but
nearly has (``ssl_pseudo_labeling.n_iteration``): a misspelt override would otherwise set a
key no node reads, and the run would go ahead with the value it meant to change. It then
checks the keys of the ``ssl_pseudo_labeling`` section, whose nodes each read only a part.

Kedro registers pipelines from code, before any node sees a parameter; the number of
self-supervised rounds (``ssl_pseudo_labeling.n_iterations``) decides how many namespaced
``iter_N`` pipelines exist, so it must be known when the pipelines are built.
:class:`PipelineShapeHook` reads it from the session's configuration (base, the ``--env``
environment and ``--params``) as soon as the context exists, and makes Kedro rebuild its
pipelines when the count differs from the one they were built with.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines

from sv_kedro.pipelines import ssl_pseudo_labeling
from sv_kedro.pipelines.ssl_pseudo_labeling.pipeline import (
    DEFAULT_ITERATIONS,
    NAMESPACE,
    check_section,
)
from sv_kedro.utils.params import misspelt_keys

log = logging.getLogger(__name__)


def _forget_built_pipelines() -> None:
    # Kedro caches the built pipelines per requested set and drops the cache when that set
    # changes: change it and put it back, so the next access calls register_pipelines again.
    requested = getattr(pipelines, "_requested_pipelines", None)
    pipelines.set_requested(["__rebuild__"])
    pipelines.set_requested(requested)


class ParamsError(ValueError):
    """A ``--params`` override that cannot be what was meant."""


class ParameterCheckHook:
    """Refuses ``--params`` keys that resemble a configured key but are not one, then
    checks the ``ssl_pseudo_labeling`` section's keys (one hook, so that a typo is always
    reported with the key it resembles, whatever order pluggy calls hooks in)."""

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        loader = context.config_loader
        overrides = dict(getattr(loader, "runtime_params", None) or {})
        if overrides:
            # The configuration without the overrides: the same loader, runtime_params emptied.
            configured = copy.copy(loader)
            configured.runtime_params = {}
            typos = misspelt_keys(overrides, configured["parameters"])
            if typos:
                listed = "; ".join(f"{given} (did you mean {meant}?)" for given, meant in typos)
                raise ParamsError(
                    f"--params: key(s) not in the {loader.env or 'base'} configuration: {listed}"
                )
        section = loader["parameters"].get(NAMESPACE)
        if isinstance(section, Mapping):
            check_section(section)


class PipelineShapeHook:
    """Builds ``ssl_pseudo_labeling`` with ``ssl_pseudo_labeling.n_iterations`` rounds."""

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        section = context.config_loader["parameters"].get(NAMESPACE) or {}
        rounds = DEFAULT_ITERATIONS
        if isinstance(section, Mapping):
            rounds = section.get("n_iterations", DEFAULT_ITERATIONS)
        if ssl_pseudo_labeling.configure_iterations(rounds):
            log.info(
                "ssl_pseudo_labeling: building %d rounds (ssl_pseudo_labeling.n_iterations)",
                ssl_pseudo_labeling.n_iterations(),
            )
            _forget_built_pipelines()
