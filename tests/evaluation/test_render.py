"""``metarl render`` for real: MuJoCo's offscreen renderer (OSMesa here), a real run's checkpoint, an
MP4 decoded back and its frames checked."""

import subprocess
import sys

import imageio.v2 as imageio
import numpy as np


def test_render_writes_a_side_by_side_video_of_before_and_after_adaptation(tmp_path, in_process):
    assert (
        in_process(
            "train",
            "--env_name",
            "ML1",
            "--task",
            "reach-v3",
            "--test_mode",
            "--max_episode_length",
            "30",
            "--output_dir",
            tmp_path,
            "--run_name",
            "r",
        )[0]
        == 0
    )
    out = tmp_path / "r.mp4"
    # A fresh process, as users run it: MuJoCo picks its OpenGL backend when first imported.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metarl_ray",
            "render",
            "--checkpoint",
            str(tmp_path / "r"),
            "--goal",
            "1",
            "--size",
            "64",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reach-v3 goal 1, 31 frames" in result.stdout
    frames = [frame for frame in imageio.get_reader(out)]
    assert len(frames) == 31 and frames[0].shape == (64, 128, 3)  # the reset state, then one frame per step
    first, last = frames[0].astype(float), frames[-1].astype(float)
    assert first.std() > 20  # a scene, not a blank buffer
    # Both halves start from the same reset state (only the codec's noise differs) ...
    assert np.abs(first[:, :64] - first[:, 64:]).mean() < 3
    # ... and in each half the arm moves during the episode.
    for half in (slice(0, 64), slice(64, 128)):
        assert np.abs(last[:, half] - first[:, half]).mean() > 2 * np.abs(first[:, :64] - first[:, 64:]).mean()


def test_render_bad_input_is_one_line(tmp_path, in_process):
    cases = [
        (("--checkpoint", tmp_path, "--out", tmp_path / "x.mp4"), "expected a checkpoint file or a run directory"),
        (("--checkpoint", tmp_path, "--out", tmp_path / "x.gif"), "expected a file name ending in .mp4"),
        (
            ("--checkpoint", tmp_path, "--goal", "50", "--out", tmp_path / "x.mp4"),
            "--goal=50: expected an integer in [0, 49]",
        ),
    ]
    for args, fragment in cases:
        status, _, err = in_process("render", *args)
        assert status == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not list(tmp_path.iterdir())
