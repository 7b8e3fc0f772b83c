"""Fixtures shared by the test modules: one local Ray per module, and ``metarl`` run in this process."""

import pytest
import ray

from metarl_ray.cli.main import main


@pytest.fixture(scope="module")
def local_ray():
    # address="local": never join a stale cluster left in Ray's temp dir; shut down with the module.
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def in_process(local_ray, capsys):
    """``metarl ARGS`` through the same ``main`` as the installed command, in this process and on the
    module's Ray: (exit status, stdout, stderr). It saves each call an interpreter start and a Ray start
    (~13 s on 2 cores); a few tests per area still run the real command in a subprocess."""

    def run(*args):
        capsys.readouterr()
        status = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run
