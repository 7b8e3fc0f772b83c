"""The meta-learner registry: each ``algorithms/`` folder behind one builder protocol
(``algorithms.base.MetaLearnerBuilder``).

``META_LEARNERS`` is the registry: a ``--algorithm`` name and where its builder lives. A new meta-learner
is a new folder with a ``BUILDER`` and one line here. Entries name a module rather than import it (as
gymnasium's ``entry_point`` does), so the config can check a name against this table without importing
every meta-learner, and a builder may import the config freely.
"""

from __future__ import annotations

import importlib
from typing import Any

META_LEARNERS: dict[str, str] = {
    "maml_ppo": "metarl_ray.algorithms.maml_ppo",
    "rl2": "metarl_ray.algorithms.rl2",
    "mt_ppo": "metarl_ray.algorithms.mt_ppo",
    "meta_sgd": "metarl_ray.algorithms.meta_sgd",
}


def algorithm_names() -> tuple[str, ...]:
    return tuple(META_LEARNERS)


def get_builder(algorithm: str) -> Any:
    """The ``base.MetaLearnerBuilder`` of a registered meta-learner (the config has checked the name).
    Typed by its callers: this module imports nothing, so that the config may import it."""
    return importlib.import_module(META_LEARNERS[algorithm]).BUILDER
