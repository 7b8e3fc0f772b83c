"""Errors the command line reports in one line (kept free of heavy imports: the CLI catches them)."""


class TrainingDivergedError(RuntimeError):
    """Too many non-finite updates in a row: the run stops with its last good checkpoint intact."""


class RunStorageError(OSError):
    """The run directory cannot be written (disk full, permissions, a lost mount); earlier files are intact."""


class EnvFaultError(RuntimeError):
    """An environment that keeps failing in one episode, after being rebuilt each time. Its episode
    uses fixed parameters and noise, so running it again would fail again: the run stops."""
