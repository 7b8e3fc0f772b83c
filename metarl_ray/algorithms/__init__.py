"""Meta-learners behind one builder protocol (``base.MetaLearnerBuilder``), one folder each; the
registry that maps ``--algorithm`` to a folder is ``metarl_ray.registry``."""
