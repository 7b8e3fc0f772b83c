"""Runs written by earlier code still load, evaluate and continue as they would have.

``tests/fixtures/checkpoints-4f40eff`` holds two tiny test-mode runs (ML1 reach-v3, 20-step episodes,
hidden 16) made at commit 4f40eff: MAML+PPO with the MLP, and RL² with the SSM, from before the
minibatched in-context update and the trial-long SSM time scales. Each was trained 1 iteration; then
that same code continued it to iteration 2, and ``continued_iteration_2.json`` keeps what it logged.
"""

import json
import shutil
from pathlib import Path

import pytest

from metarl_ray.training.metrics import read_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints-4f40eff"


@pytest.mark.parametrize("run", ["maml-mlp", "rl2-ssm"])
def test_a_run_from_earlier_code_continues_as_that_code_did_and_evaluates(run, tmp_path, in_process):
    shutil.copytree(FIXTURES / run, tmp_path / run)
    status, _, err = in_process("train", "--resume", "--run_name", run, "--output_dir", tmp_path, "--num_epochs", "2")
    assert status == 0, err
    rows = read_metrics(tmp_path / run)
    assert [row["iteration"] for row in rows] == [1, 2]
    expected = json.loads((FIXTURES / run / "continued_iteration_2.json").read_text())
    for key, value in expected.items():
        # Same data and noise; the loss's float summation order may differ from the old code's.
        assert rows[1][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    status, out, err = in_process(
        "eval", "--checkpoint", tmp_path / run, "--goals_per_class", "1", "--json", "--num_workers", "0"
    )
    assert status == 0, err
    report = json.loads(out)
    assert report["runs"][0]["iteration"] == 2 and report["runs"][0]["goals"]
