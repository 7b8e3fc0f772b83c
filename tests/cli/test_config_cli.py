"""Config validation and the command line: bad input -> one line, exit 2, nothing written."""

import subprocess
import sys

import pytest
import yaml

from metarl_ray.cli.main import main, resolve_train
from metarl_ray.config import (
    ConfigError,
    EnvConfig,
    MAMLConfig,
    MetaLearnerConfig,
    PolicyConfig,
    build_config,
    load_yaml_overrides,
)
from metarl_ray.envs.metaworld import check_env_config

SEED_COMMAND = (
    "--env metaworld --env_name MT10 --num_tasks 10 --num_epochs 100 --inner_lr 0.01 --meta_lr 0.001 "
    "--batch_size 20 --policy_type mlp --grad_clip 0.3 --num_inner_steps 3 --hidden_size 128 "
    "--first_order --resume --checkpoint_path PATH --run_name NAME --device cpu "
    "--max_episode_length 1000 --test_mode"
)


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "metarl_ray", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_seed_project_flags_parse_with_underscores_and_hyphens(tmp_path):
    for spelling in (SEED_COMMAND, SEED_COMMAND.replace("_", "-").replace("--env-name", "--env_name")):
        argv = (
            spelling.replace("--resume --checkpoint_path PATH ", "")
            .replace("--resume --checkpoint-path PATH ", "")
            .split()
        )
        config, run_path, checkpoint = resolve_train(argv + ["--output_dir", str(tmp_path)])
        assert checkpoint is None and run_path == tmp_path / "NAME"
        assert config.env.benchmark == "MT10" and config.env.max_episode_length == 1000
        assert config.maml.num_tasks == 10 and config.maml.episodes_per_task == 20
        assert config.maml.inner_lr == 0.01 and config.maml.num_inner_steps == 3 and config.maml.first_order
        assert config.ppo.meta_lr == 0.001 and config.ppo.grad_clip == 0.3
        assert config.policy.hidden_size == 128 and config.learner.device == "cpu"
        # explicit flags win over test-mode presets; unset ones take the presets
        assert config.run.num_epochs == 100 and config.run.test_mode and config.ppo.num_ppo_epochs == 2


def test_yaml_sections_and_flat_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"maml": {"inner_lr": 0.05}, "meta_lr": 0.002}))
    config = build_config(load_yaml_overrides(path))
    assert config.maml.inner_lr == 0.05 and config.ppo.meta_lr == 0.002
    path.write_text("maml: {inner_lrr: 1}")
    with pytest.raises(ConfigError, match="inner_lrr"):
        build_config(load_yaml_overrides(path))


@pytest.mark.parametrize(
    "section, values, flag",
    [
        (EnvConfig, {"benchmark": "ML7"}, "--benchmark='ML7'"),
        (
            lambda **values: check_env_config(EnvConfig(**values)),
            {"benchmark": "ML1", "task": "fly-v3"},
            "--task='fly-v3'",
        ),
        (MAMLConfig, {"inner_lr": -1.0}, "--inner_lr=-1.0"),
        (MAMLConfig, {"num_inner_steps": 0}, "--num_inner_steps=0"),
    ],
)
def test_invalid_values_name_the_flag_and_the_allowed_range(section, values, flag):
    with pytest.raises(ConfigError) as error:
        section(**values)
    assert str(error.value).startswith(flag) and "expected" in str(error.value)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--inner_lr", "abc"], "--inner_lr='abc': expected a number"),
        (["--inner-lr", "-0.5"], "--inner_lr=-0.5: expected a number in (0, 10]"),
        (["--num_tasks", "2.5"], "--num_tasks='2.5': expected an integer"),
        (["--env_name", "ML3"], "--benchmark='ML3'"),
        (["--policy_type", "lstm"], "--policy_type='lstm': expected mlp, ssm or gru"),
        (["--ssm_scan", "fast"], "--ssm_scan='fast': expected adjoint, reference, doubling or chunked"),
        (
            ["--env_name", "ML10", "--validation_classes", "lever-pull-v3"],
            "--validation_classes='lever-pull-v3': expected fewer than 10 of ML10's training classes",
        ),
        (
            ["--num_learners", "3", "--num_tasks", "2"],
            "--num_learners=3: expected at most --num_tasks=2 (each learner needs a task)",
        ),
        (["--num_learners", "0"], "--num_learners=0: expected an integer in [1, 256]"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps=0: expected an integer in [1, 1000]"),
        (["--meta_batching", "vmap"], "--meta_batching='vmap': expected auto, batched or per_task"),
        (
            ["--algorithm", "rl2", "--policy_type", "ssm", "--rl2_chunk_length", "300"],
            "--rl2_chunk_length=300: expected 0 or a divisor of the trial length 5000",
        ),
        (["--rl2_lr", "0"], "--rl2_lr=0.0: expected a number in (0, 1]"),
        (["--rl2_minibatches", "0"], "--rl2_minibatches=0: expected an integer in [1, 1000]"),
        (["--rl2_normalize_advantages", "maybe"], "unrecognized arguments: maybe"),
        (["--ssm_max_timescale", "-1"], "--ssm_max_timescale=-1: expected 0 (S4D-Real) or a number of steps"),
        (["--device", "tpu"], "--device='tpu': expected auto, cpu or cuda"),
        (["--env", "mujoco"], "--env='mujoco': expected metaworld"),
        (["--bogus", "1"], "unrecognized arguments: --bogus"),
        (["--resume"], "needs --run_name NAME or --checkpoint_path PATH"),
        (["--checkpoint_path", "/nonexistent/ckpt.pt"], "--checkpoint_path='/nonexistent/ckpt.pt'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, fragment, capsys, monkeypatch):
    # In-process (the CLI's own main, as the console script calls it): a subprocess per case spent
    # ~5 s importing torch, Ray and Meta-World. The other tests here run the real console command.
    monkeypatch.chdir(tmp_path)
    try:
        returncode = main(["train", "--output_dir", str(tmp_path / "runs"), *args])
    except SystemExit as exit_:  # argparse's own errors
        returncode = exit_.code
    stderr = capsys.readouterr().err
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_config_saved_before_the_in_context_settings_resumes_with_the_behaviour_it_trained_with():
    """Old run directories and checkpoints lack the rl2_* and ssm_max_timescale settings: they get the
    full-batch whole-trial update and S4D-Real initialisation those runs had, not today's defaults."""
    from metarl_ray.config import TrainConfig, config_from_dict

    saved = TrainConfig(
        meta_learner=MetaLearnerConfig(algorithm="rl2"), policy=PolicyConfig(policy_type="ssm")
    ).to_dict()
    for key in [k for k in saved["meta_learner"] if k.startswith("rl2_")]:
        del saved["meta_learner"][key]
    del saved["policy"]["ssm_max_timescale"]
    saved["ppo"].update(num_ppo_epochs=7, gae_lambda=0.9, meta_lr=0.002)
    old = config_from_dict(saved)
    assert (old.meta_learner.rl2_epochs, old.meta_learner.rl2_minibatches, old.meta_learner.rl2_chunk_length) == (
        7,
        1,
        0,
    )
    assert (old.meta_learner.rl2_gae_lambda, old.meta_learner.rl2_lr, old.meta_learner.rl2_entropy_coef) == (
        0.9,
        0.002,
        0.0,
    )
    assert old.meta_learner.rl2_normalize_advantages is True and old.policy.ssm_max_timescale == 0
    # A config saved with the settings keeps them.
    new = TrainConfig(meta_learner=MetaLearnerConfig(algorithm="rl2"), policy=PolicyConfig(policy_type="ssm"))
    assert config_from_dict(new.to_dict()) == new and new.policy.ssm_max_timescale == 5000


def test_the_cli_resolves_the_in_context_ssm_time_scales_to_the_trial_and_keeps_s4d_for_maml():
    """build_config (what the CLI, Tune and the benchmark suites call) resolves ssm_max_timescale from
    the algorithm, not from a default config's already resolved value."""
    rl2 = build_config({"meta_learner": {"algorithm": "rl2"}, "policy": {"policy_type": "ssm"}})
    assert rl2.policy.ssm_max_timescale == 10 * 500
    short = build_config(
        {"meta_learner": {"algorithm": "rl2", "episodes_per_trial": 4}, "policy": {"policy_type": "ssm"}}
    )
    assert short.policy.ssm_max_timescale == 4 * 500
    assert build_config({"policy": {"policy_type": "ssm"}}).policy.ssm_max_timescale == 0
    explicit = build_config(
        {"meta_learner": {"algorithm": "rl2"}, "policy": {"policy_type": "ssm", "ssm_max_timescale": 0}}
    )
    assert explicit.policy.ssm_max_timescale == 0


def test_every_learner_has_a_trial_chunk_for_each_minibatch():
    """Each minibatch step is an all-reduce across learners, so the smallest share must fill them all."""
    flags = {"algorithm": "rl2", "rl2_chunk_length": 0}
    with pytest.raises(ConfigError, match="--rl2_minibatches=8: expected at most 4, the trial chunks"):
        build_config(
            {
                "meta_learner": flags,
                "policy": {"policy_type": "gru"},
                "maml": {"num_tasks": 5},
                "learner": {"num_learners": 2},
            }
        )
    ok = build_config(
        {
            "meta_learner": {**flags, "rl2_minibatches": 4},
            "policy": {"policy_type": "gru"},
            "maml": {"num_tasks": 5},
            "learner": {"num_learners": 2},
        }
    )
    assert ok.meta_learner.rl2_minibatches == 4


def test_a_maml_run_saved_before_the_in_context_settings_pools_with_a_new_one():
    """rl2_* settings are no part of a MAML+PPO run: an old MAML config and a new one are one method."""
    from metarl_ray.config import TrainConfig, config_from_dict, method_settings

    new = TrainConfig()
    saved = new.to_dict()
    for key in [k for k in saved["meta_learner"] if k.startswith("rl2_")]:
        del saved["meta_learner"][key]
    del saved["policy"]["ssm_max_timescale"], saved["policy"]["num_encoder_layers"]
    old = config_from_dict(saved)
    assert old.meta_learner == MetaLearnerConfig() and old.policy == new.policy
    legacy_rl2_values = {**saved, "meta_learner": {**new.to_dict()["meta_learner"], "rl2_epochs": 5}}
    assert method_settings(config_from_dict(legacy_rl2_values).to_dict()) == method_settings(new.to_dict())


def test_existing_run_directory_is_never_overwritten(tmp_path):
    run = tmp_path / "runs" / "keep"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_bytes(b"precious")
    result = run_cli("train", "--output_dir", str(tmp_path / "runs"), "--run_name", "keep", cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (run / "metrics.jsonl").read_bytes() == b"precious"


def test_eval_of_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope")]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "--checkpoint=" in stderr


def test_help_lists_each_flag_with_its_doc():
    result = subprocess.run([sys.executable, "-m", "metarl_ray", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--inner_lr" in result.stdout and "--inner-lr" in result.stdout
    assert "Step size of the inner-loop policy-gradient step" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--goals_per_class", "51"], "--goals_per_class=51: expected an integer in [1, 50]"),
        (["--num_evals", "x"], "--num_evals"),
    ],
)
def test_eval_rejects_bad_values_in_one_line(tmp_path, args, fragment, capsys):
    from metarl_ray.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "run", 1, {"iteration": 1, "config": {}, "learner": {}})
    try:
        returncode = main(["eval", "--checkpoint", str(tmp_path / "run"), *args])
    except SystemExit as exit_:  # argparse's own errors
        returncode = exit_.code
    stderr = capsys.readouterr().err
    assert returncode == 2 and len(stderr.strip().splitlines()) == 1 and fragment in stderr


def test_corrupt_checkpoint_is_a_one_line_error_for_eval_and_resume(tmp_path):
    bad = tmp_path / "runs" / "r" / "checkpoints"
    bad.mkdir(parents=True)
    (bad / "checkpoint_000001.pt").write_bytes(b"\x00garbage")
    for args in (
        ["eval", "--checkpoint", str(bad.parent)],
        ["train", "--resume", "--run_name", "r", "--output_dir", str(tmp_path / "runs")],
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and "unreadable checkpoint" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert (bad / "checkpoint_000001.pt").read_bytes() == b"\x00garbage"
