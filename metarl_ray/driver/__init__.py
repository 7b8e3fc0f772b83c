"""The drivers: the training loop and Tune searches, above the Ray actors and pools they drive."""
