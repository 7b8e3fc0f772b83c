"""Multi-task PPO (Meta-World 2019's MT-PPO baseline): one policy trained with PPO on the meta-batch's
tasks pooled, and no adaptation at test time. On MT10 it is the standard multi-task baseline; on ML10 it
is the zero-shot control that tells what MAML's adaptation adds. The policy sees the observation alone
(no task id), as MAML+PPO's does, so the two differ only in the update."""

from __future__ import annotations

from typing import Any

from torch import nn

from metarl_ray.algorithms.mt_ppo.agent import MultiTaskAgent
from metarl_ray.algorithms.mt_ppo.objective import EpisodeTensors, MultiTaskPPO, TaskEpisodes
from metarl_ray.algorithms.mt_ppo.rollouts import MultiTaskRollouts
from metarl_ray.config import MAMLConfig, MetaLearnerConfig, PPOConfig, TrainConfig
from metarl_ray.envs import EnvFamily

__all__ = ["BUILDER", "EpisodeTensors", "MultiTaskAgent", "MultiTaskPPO", "MultiTaskRollouts", "TaskEpisodes"]


class MultiTaskPPOBuilder:
    name = "mt_ppo"

    def check_config(self, config: TrainConfig) -> None:
        """Any policy: a recurrent one keeps its memory within an episode."""

    def default_ssm_max_timescale(self, config: TrainConfig) -> int:
        return 0  # an episode-long memory: S4D-Real's time scales

    def legacy_settings(self, sections: dict[str, dict[str, Any]]) -> None:
        """New with this folder: no old configs."""

    def policy_input_dim(self, family: EnvFamily) -> int:
        return family.observation_dim

    def extend_policy(self, policy: nn.Module, maml: MAMLConfig) -> None:
        """No meta-parameters besides the policy's."""

    def rollout_program(self, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig) -> MultiTaskRollouts:
        return MultiTaskRollouts(maml, ppo)

    def meta_learner(
        self, policy: nn.Module, meta_learner: MetaLearnerConfig, maml: MAMLConfig, ppo: PPOConfig
    ) -> MultiTaskPPO:
        return MultiTaskPPO(policy, ppo)

    def agent(self, policy: nn.Module, config: TrainConfig, family: EnvFamily, seed: int) -> MultiTaskAgent:
        return MultiTaskAgent(policy, seed)

    def official_envs(self, envs: Any) -> Any:
        return envs

    def adaptation_protocol(self, config: TrainConfig) -> dict[str, Any]:
        return {"num_inner_steps": 0}  # Meta-World's evaluation still runs its adaptation episodes; adapt is a no-op


BUILDER = MultiTaskPPOBuilder()
