"""Hooks that shape the registered pipelines from the session's parameters.

Kedro registers pipelines from code, before any node sees a parameter; the number of
self-supervised rounds (``ssl_pseudo_labeling.n_iterations``) decides how many namespaced
``iter_N`` pipelines exist, so it must be known when the pipelines are built.
:class:`PipelineShapeHook` reads it from the session's configuration (base, the ``--env``
environment and ``--params``) as soon as the context exists, and makes Kedro rebuild its
pipelines when the count differs from the one they were built with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines

from sv_kedro.pipelines import ssl_pseudo_labeling
from sv_kedro.pipelines.ssl_pseudo_labeling.pipeline import DEFAULT_ITERATIONS, NAMESPACE

log = logging.getLogger(__name__)


def _forget_built_pipelines() -> None:
    # Kedro caches the built pipelines per requested set and drops the cache when that set
    # changes: change it and put it back, so the next access calls register_pipelines again.
    requested = getattr(pipelines, "_requested_pipelines", None)
    pipelines.set_requested(["__rebuild__"])
    pipelines.set_requested(requested)


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
