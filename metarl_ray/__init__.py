"""metarl-ray: distributed meta-reinforcement learning (MAML+PPO) on Meta-World with Ray."""

__version__ = "0.1.0"
