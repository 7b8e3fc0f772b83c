"""MAML with a PPO outer objective: adapt by an inner policy-gradient step (``objective`` defines both
steps; ``rollouts`` runs support -> inner step -> query in the rollout actor; ``agent`` speaks
Meta-World's evaluation protocol)."""

from __future__ import annotations

from typing import Any

from torch import nn

from metarl_ray.algorithms.maml_ppo.agent import MAMLAgent, episodes_to_batch
from metarl_ray.algorithms.maml_ppo.objective import MAMLPPO, TaskTensors, TensorBatch, adapt
from metarl_ray.algorithms.maml_ppo.rollouts import MAMLRollouts
from metarl_ray.config import MAMLConfig, MetaLearnerConfig, PPOConfig, TrainConfig
from metarl_ray.envs import EnvFamily

__all__ = [
    "BUILDER",
    "MAMLPPO",
    "MAMLAgent",
    "MAMLPPOBuilder",
    "MAMLRollouts",
    "TaskTensors",
    "TensorBatch",
    "adapt",
    "episodes_to_batch",
]


class MAMLPPOBuilder:
    name = "maml_ppo"

    def check_config(self, config: TrainConfig) -> None:
        """Any policy adapts its parameters."""

    def default_ssm_max_timescale(self, config: TrainConfig) -> int:
        return 0  # an episode-long memory: S4D-Real's time scales

    def legacy_settings(self, sections: dict[str, dict[str, Any]]) -> None:
        """Every MAML+PPO setting has had its default since the first checkpoint format."""

    def policy_input_dim(self, family: EnvFamily) -> int:
        return family.observation_dim

    def extend_policy(self, policy: nn.Module, maml: MAMLConfig) -> None:
        """No meta-parameters besides the policy's."""

    def rollout_program(self, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig) -> MAMLRollouts:
        return MAMLRollouts(maml, ppo)

    def meta_learner(
        self, policy: nn.Module, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig
    ) -> MAMLPPO:
        return MAMLPPO(policy, maml, ppo)

    def agent(self, policy: nn.Module, config: TrainConfig, family: EnvFamily, seed: int) -> MAMLAgent:
        return MAMLAgent(policy, config, seed)

    def official_envs(self, envs: Any) -> Any:
        return envs

    def adaptation_protocol(self, config: TrainConfig) -> dict[str, Any]:
        return {"num_inner_steps": config.maml.num_inner_steps}


BUILDER = MAMLPPOBuilder()
