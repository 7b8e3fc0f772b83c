"""The deployment files in cluster/: they parse, the launcher configs pass Ray's own validation, every
image and rayVersion is the pinned Ray, and every `metarl` command in them is one the CLI accepts.

What cannot run here: `docker build` (no engine on this machine), `ray up` (needs a cloud account or
SSH hosts) and `kubectl apply` (needs a Kubernetes cluster with KubeRay). These tests check what those
tools would read; the job-submission and multi-node tests run the same commands on a real local cluster.
"""

import copy
import importlib.metadata
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from metarl_ray.cli.main import check_command
from metarl_ray.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
YAML_FILES = sorted(CLUSTER.rglob("*.yaml"))
LAUNCHER_FILES = sorted((CLUSTER / "launcher").glob("*.yaml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
VERSION = re.compile(r"\d+\.\d+\.\d+")


def pinned_ray_version() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in dependencies if d.startswith("ray["))
    assert "==" in pin, f"Ray must be pinned exactly: {pin}"
    return pin.split("==")[1]


def documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def strings(node):
    """Every string value in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def images(node):
    """Every container image a YAML tree names (KubeRay containers, launcher docker sections)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("image", "head_image", "worker_image") and isinstance(value, str):
                yield value
            else:
                yield from images(value)
    elif isinstance(node, list):
        for value in node:
            yield from images(value)


def dockerfile_base_images() -> list[str]:
    """The FROM line with its ARG defaults substituted, for every VARIANT the file documents."""
    lines = (CLUSTER / "Dockerfile").read_text().splitlines()
    defaults = dict(re.match(r"ARG (\w+)=(\S+)", line).groups() for line in lines if re.match(r"ARG \w+=", line))
    base = next(line.split()[1] for line in lines if line.startswith("FROM "))
    return [
        re.sub(r"\$\{(\w+)\}", lambda m, variant=variant: {**defaults, "VARIANT": variant}[m.group(1)], base)
        for variant in ("cpu", "gpu")
    ]


def metarl_commands(path: Path) -> list[list[str]]:
    """Every `metarl ...` command in a file: YAML values (entrypoints, start commands) and the commands
    shown in its comments (with shell line continuations joined)."""
    commands = [
        shlex.split(text) for doc in documents(path) for text in strings(doc) if text.strip().startswith("metarl ")
    ]
    comment_text = "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)
    for command in re.findall(
        r"metarl (?:train|tune|eval)[^\n]*(?:\\\n[^\n]*)*", comment_text.replace("\\\n ", "\\\n")
    ):
        commands.append(shlex.split(command.replace("\\\n", " ")))
    return [words[words.index("metarl") + 1 :] for words in commands]


def test_every_file_parses():
    assert {p.name for p in LAUNCHER_FILES} == {"aws.yaml", "onprem.yaml"}
    assert {p.name for p in KUBERAY_FILES} == {"raycluster.yaml", "rayjob-ml10.yaml", "rayjob-tune.yaml"}
    for path in YAML_FILES:
        assert documents(path), path
    instructions = [
        line.split()[0]
        for line in (CLUSTER / "Dockerfile").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    assert instructions[0] == "ARG" and "FROM" in instructions and "CMD" in instructions
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY"):  # every file the image copies exists in the build context (the repo)
            for source in line.split()[2:-1]:
                assert (REPO / source).exists(), source


def test_pinned_ray_is_installed_and_every_image_and_ray_version_carries_it():
    pinned = pinned_ray_version()
    assert importlib.metadata.version("ray") == pinned
    assert dockerfile_base_images() == [f"rayproject/ray:{pinned}-py311-cpu", f"rayproject/ray:{pinned}-py311-gpu"]
    found = 0
    for path in YAML_FILES:
        for doc in documents(path):
            for image in images(doc):
                tag = image.rsplit(":", 1)[1]
                assert VERSION.findall(tag) == [pinned], f"{path.name}: {image}"
                found += 1
            if doc.get("kind") in ("RayCluster", "RayJob"):
                spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
                assert spec["rayVersion"] == pinned, path.name
    assert found >= 10


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_configs_pass_rays_own_validation(path):
    # The schema check and the default filling `ray up` does before it contacts any cloud; what needs
    # credentials (the provider's bootstrap) cannot run here.
    config = documents(path)[0]
    validate_config(config)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command  # every node runs with the mounted token
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_aws_node_types_put_the_learner_on_a_gpu_and_rollouts_on_spot_cpus():
    types = documents(CLUSTER / "launcher" / "aws.yaml")[0]["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["learner_gpu"]["resources"] == {"CPU": 0, "GPU": 1}
    assert types["learner_gpu"]["docker"]["worker_image"].endswith("-gpu")
    assert types["rollout_cpu"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


def test_kuberay_manifests_have_the_groups_and_job_settings_users_need():
    cluster = documents(CLUSTER / "kuberay" / "raycluster.yaml")[0]
    jobs = {path.name: documents(path)[0] for path in KUBERAY_FILES if path.name.startswith("rayjob")}
    for spec in [cluster["spec"]] + [job["spec"]["rayClusterSpec"] for job in jobs.values()]:
        assert spec["authOptions"] == {"mode": "token"}
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        assert any(group["groupName"] == "rollout-cpu" for group in spec["workerGroupSpecs"])
    groups = {group["groupName"]: group for group in cluster["spec"]["workerGroupSpecs"]}
    learner = groups["learner-gpu"]
    assert learner["rayStartParams"]["num-cpus"] == "0"
    assert learner["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for name, job in jobs.items():
        assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"] is True, name
        assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert jobs["rayjob-ml10.yaml"]["spec"]["entrypoint"].split()[:4] == ["metarl", "train", "--benchmark", "ML10"]
    assert jobs["rayjob-tune.yaml"]["spec"]["entrypoint"].split()[:3] == [
        "metarl",
        "tune",
        "tune_configs/ml10_asha.yaml",
    ]


def test_every_metarl_command_in_the_deployment_files_is_valid(monkeypatch):
    monkeypatch.chdir(REPO)  # entrypoints run in the job's working directory: the project root
    checked = 0
    for path in YAML_FILES:
        for argv in metarl_commands(path):
            try:
                check_command(argv)
            except ConfigError as error:
                pytest.fail(f"{path.name}: metarl {' '.join(argv)}: {error}")
            checked += 1
    assert checked >= 6


def test_a_broken_entrypoint_is_caught(monkeypatch):
    monkeypatch.chdir(REPO)
    entrypoint = shlex.split(documents(CLUSTER / "kuberay" / "rayjob-ml10.yaml")[0]["spec"]["entrypoint"])[1:]
    check_command(entrypoint)
    broken = [("-0.1" if previous == "--num_tasks" else word) for previous, word in zip([""] + entrypoint, entrypoint)]
    with pytest.raises(ConfigError, match="--num_tasks"):
        check_command(broken)
    with pytest.raises(ConfigError, match="storage_path"):
        check_command(["tune", "tune_configs/ml10_asha.yaml", "--storage_path", "ftp://nowhere/tune"])
