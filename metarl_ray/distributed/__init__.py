"""Ray at the edges: the actors wrapping the plain workers and learners, their pools, Tune."""
