"""Meta-learners behind one protocol (``base.MetaLearner``): MAML+PPO; GAE shared by them."""
