"""A faster stepping path for Meta-World v3 envs whose every output equals stock Meta-World's bit for bit.

Most of a Meta-World step is Python around MuJoCo, not physics (issue 9's profile: ``mj_step`` is
about a fifth of ``env.step``). The hot helpers, found by profiling all 50 v3 classes
(``python benchmarks/envs.py --profile``), are replaced on a subclass of each task class:

- name lookups (``data.body("hand")``, ``data.site(...)``, ``data.geom(...)``) on every call become ids
  looked up once per env;
- ``touching_object``'s two Python loops over every contact become one masked pass over the contact
  arrays;
- the observation is written into one preallocated array instead of split/hstack chains;
- scipy's ``Rotation.from_matrix(...).as_quat()`` for object orientations becomes the same algorithm
  (Markley 2008, as scipy's Cython backend writes it) on Python floats, in the same operation order;
- ``_gripper_caging_reward`` calls a scalar ``tolerance`` with the same arithmetic as reward_utils'.

Nothing in the installed Meta-World changes: :func:`make_fast` turns one env into an instance of its
fast subclass. Arithmetic is kept in the same order and dtypes as Meta-World's, which is what makes
the outputs bit-identical rather than close; ``tests/envs/test_fast_envs.py`` checks every class. The path
is enabled only for the versions it was verified against (:data:`VERIFIED_VERSIONS`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
from typing import Any

import mujoco
import numpy as np
from metaworld.utils.reward_utils import hamacher_product  # only imported where Meta-World envs are built

logger = logging.getLogger(__name__)

# Bit-identity was verified with these; the quaternion path also reproduces scipy's arithmetic.
VERIFIED_VERSIONS = {"metaworld": ("3.1.1",), "scipy": ("1.17.",)}

# scipy's Rotation.from_matrix orthogonalises (SVD) a matrix whose Gramian is off the identity by more
# than about 1e-12; inside this stricter band it certainly does not, so the closed form is exact.
_ORTHOGONAL_BAND = 1e-13

# Where each class's _get_quat_objects reads the matrix it gives scipy: (kind, name, zero padding).
_ROTATION_SOURCES: dict[str, tuple[str, str, int]] = {
    "coffee-pull-v3": ("geom", "mug", 0),
    "coffee-push-v3": ("geom", "mug", 0),
    "door-close-v3": ("geom", "handle", 0),
    "door-open-v3": ("geom", "handle", 0),
    "lever-pull-v3": ("geom", "objGeom", 0),
    "peg-insert-side-v3": ("site", "pegGrasp", 0),
    "pick-place-v3": ("geom", "objGeom", 0),
    "pick-place-wall-v3": ("geom", "objGeom", 0),
    "plate-slide-back-side-v3": ("geom", "puck", 0),
    "plate-slide-back-v3": ("geom", "puck", 0),
    "plate-slide-side-v3": ("geom", "puck", 0),
    "plate-slide-v3": ("geom", "puck", 0),
    "push-back-v3": ("geom", "objGeom", 0),
    "push-v3": ("geom", "objGeom", 0),
    "push-wall-v3": ("geom", "objGeom", 0),
    "reach-v3": ("geom", "objGeom", 0),
    "reach-wall-v3": ("geom", "objGeom", 0),
    "shelf-place-v3": ("geom", "objGeom", 0),
    "soccer-v3": ("body", "soccer_ball", 0),
    "stick-pull-v3": ("body", "stick", 4),
    "stick-push-v3": ("body", "stick", 4),
    "sweep-into-v3": ("geom", "objGeom", 0),
}


# np.clip's own kernel: np.clip(a, lo, hi) ends in this ufunc after several Python-level checks.
_clip = getattr(np._core.umath, "clip", np.clip)
_INFO_AFTER_SIM_EXCEPTION = {
    "success": False,
    "near_object": 0.0,
    "grasp_success": False,
    "grasp_reward": 0.0,
    "in_place_reward": 0.0,
    "obj_to_target": 0.0,
    "unscaled_reward": 0.0,
}
_MOCAP_QUAT = (1, 0, 1, 0)


def unsupported_reason() -> str | None:
    """Why the fast path cannot be used with the installed packages, or None when it can."""
    for package, prefixes in VERIFIED_VERSIONS.items():
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return f"{package} is not installed"
        if not any(version == p or (p.endswith(".") and version.startswith(p)) for p in prefixes):
            return f"{package} {version} is not a verified version ({', '.join(prefixes)})"
    return None


@functools.lru_cache(maxsize=1)
def fast_path_available() -> bool:
    reason = unsupported_reason()
    if reason is not None:
        logger.warning("fast_envs: %s; using stock Meta-World envs", reason)
    return reason is None


def make_fast(env: Any) -> Any:
    """Turn a bare Meta-World v3 env into its fast subclass, in place (state and task are kept)."""
    stock_class = type(env)
    if not fast_path_available() or getattr(stock_class, "_is_fast_env", False):
        return env
    env.__class__ = fast_class(stock_class)
    return env


@functools.cache
def fast_class(stock_class: type) -> type:
    """The fast subclass of one task class; overrides only what the task class itself leaves to the base."""
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    own = {name for cls in stock_class.__mro__[: stock_class.__mro__.index(SawyerXYZEnv)] for name in vars(cls)}
    members = {
        name: value for name, value in vars(_FastSawyerMixin).items() if not name.startswith("__") and name not in own
    }
    env_name = _env_name_of(stock_class)
    if env_name in _ROTATION_SOURCES:
        members["_get_quat_objects"] = _get_quat_objects_fast
    members["_rotation_source"] = _ROTATION_SOURCES.get(env_name)
    members["_is_fast_env"] = True
    members["__module__"] = __name__
    name = f"Fast{stock_class.__name__}"
    fast = type(name, (stock_class,), members)
    globals()[name] = fast  # so that a fast env pickles by reference like a stock one
    return fast


def __getattr__(name: str) -> type:
    # Unpickling in a fresh process: build the fast class on demand from its stock class's name.
    if name.startswith("Fast"):
        for stock_class in _stock_classes().values():
            if f"Fast{stock_class.__name__}" == name:
                return fast_class(stock_class)
    raise AttributeError(name)


@functools.lru_cache(maxsize=1)
def _stock_classes() -> dict[str, type]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return dict(ALL_V3_ENVIRONMENTS)


def _env_name_of(stock_class: type) -> str | None:
    return next((name for name, cls in _stock_classes().items() if cls is stock_class), None)


class _Ids:
    """MuJoCo ids of the named bodies, sites and geoms that Meta-World looks up by name every step."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._cache: dict[tuple[str, str], int] = {}
        self.hand = self.body_id("hand")
        self.right_claw = self.body_id("rightclaw")
        self.left_claw = self.body_id("leftclaw")
        self.right_effector = self.site_id("rightEndEffector")
        self.left_effector = self.site_id("leftEndEffector")
        self.left_pad_geom = self.geom_id("leftpad_geom")
        self.right_pad_geom = self.geom_id("rightpad_geom")

    def _id(self, kind: str, name: str) -> int:
        try:
            return self._cache[kind, name]
        except KeyError:
            # model.body/site/geom(name) raises KeyError on an unknown name, as stock's data lookups do
            self._cache[kind, name] = getattr(self.model, kind)(name).id
            return self._cache[kind, name]

    def body_id(self, name: str) -> int:
        return self._id("body", name)

    def site_id(self, name: str) -> int:
        return self._id("site", name)

    def geom_id(self, name: str) -> int:
        return self._id("geom", name)


def _long_tail_tolerance(x: Any, lower: float, upper: float, margin: Any) -> float:
    """``reward_utils.tolerance(x, (lower, upper), margin, sigmoid="long_tail")`` for a scalar x.

    Same float64 operations in the same order, without numpy's scalar machinery. The square stays a
    ``** 2``: numpy's float64 power calls C ``pow``, which is not always the correctly rounded product.
    """
    if lower > upper:
        raise ValueError("Lower bound must be <= upper bound.")
    if margin < 0:
        raise ValueError(f"`margin` must be non-negative. Current value: {margin}")
    if lower <= x <= upper:
        return 1.0
    if margin == 0:
        return 0.0
    distance = float((lower - x) if x < lower else (x - upper)) / float(margin)
    scaled = distance * _LONG_TAIL_SCALE
    return 1.0 / (scaled**2 + 1.0)


_LONG_TAIL_SCALE = float(np.sqrt(1 / 0.1 - 1))  # reward_utils' scale for its default value_at_margin 0.1


def quat_from_rotation_matrix(matrix: np.ndarray) -> np.ndarray:
    """``scipy.spatial.transform.Rotation.from_matrix(matrix).as_quat()`` (x, y, z, w), bit for bit.

    Shepperd/Markley's method in scipy's operation order. Matrices that are not clearly orthogonal with
    a positive determinant go to scipy itself, which orthogonalises them (or raises).
    """
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = matrix.tolist()
    gram_off = max(
        abs(m00 * m10 + m01 * m11 + m02 * m12),
        abs(m00 * m20 + m01 * m21 + m02 * m22),
        abs(m10 * m20 + m11 * m21 + m12 * m22),
    )
    gram_diag = max(
        abs(m00 * m00 + m01 * m01 + m02 * m02 - 1.0),
        abs(m10 * m10 + m11 * m11 + m12 * m12 - 1.0),
        abs(m20 * m20 + m21 * m21 + m22 * m22 - 1.0),
    )
    determinant = m00 * (m11 * m22 - m12 * m21) - m01 * (m10 * m22 - m12 * m20) + m02 * (m10 * m21 - m11 * m20)
    if not (gram_off < _ORTHOGONAL_BAND and gram_diag < _ORTHOGONAL_BAND and determinant > 0.5):
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(matrix).as_quat()
    m = ((m00, m01, m02), (m10, m11, m12), (m20, m21, m22))
    trace = m00 + m11 + m22
    decision = (m00, m11, m22, trace)
    choice = 0
    for index in (1, 2, 3):  # first maximum, as scipy's _argmax4
        if decision[index] > decision[choice]:
            choice = index
    q = [0.0, 0.0, 0.0, 0.0]
    if choice != 3:
        i = choice
        j = (i + 1) % 3
        k = (j + 1) % 3
        q[i] = 1 - trace + 2 * m[i][i]
        q[j] = m[j][i] + m[i][j]
        q[k] = m[k][i] + m[i][k]
        q[3] = m[k][j] - m[j][k]
    else:
        q[0] = m21 - m12
        q[1] = m02 - m20
        q[2] = m10 - m01
        q[3] = 1 + trace
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    return np.array([q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm])


def _get_quat_objects_fast(self: Any) -> np.ndarray:
    """The class's own _get_quat_objects (scipy on one named frame's matrix), without scipy's overhead."""
    kind, name, padding = self._rotation_source
    ids, data = self._ids_of(), self.data
    if kind == "geom":
        matrix = data.geom_xmat[ids.geom_id(name)]
    elif kind == "site":
        matrix = data.site_xmat[ids.site_id(name)]
    else:
        matrix = data.xmat[ids.body_id(name)]
    quat = quat_from_rotation_matrix(matrix.reshape(3, 3))
    return np.hstack((quat, np.zeros(padding))) if padding else quat


class _FastSawyerMixin:
    """Replacements for SawyerXYZEnv's (and gymnasium MujocoEnv's) hot helpers; same results."""

    data: Any
    model: Any

    def _ids_of(self) -> _Ids:
        ids = self.__dict__.get("_fast_ids")
        if ids is None or ids.model is not self.model:  # first use, or a new model after unpickling
            ids = self.__dict__["_fast_ids"] = _Ids(self.model)
        return ids

    def step(self, action: np.ndarray) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
        # SawyerXYZEnv.step with gymnasium's do_simulation inlined; same calls into MuJoCo, same order.
        if not self._set_task_called:
            raise RuntimeError("You must call env.set_task before using env.step")
        assert len(action) == 4, f"Actions should be size 4, got {len(action)}"
        self.set_xyz_action(action[:3])
        if self.curr_path_length >= self.max_path_length:
            raise ValueError("You must reset the env manually once truncate==True")
        model, data = self.model, self.data
        ctrl = [action[-1], -action[-1]]
        if model.nu != 2:
            raise ValueError(f"Action dimension mismatch. Expected {(model.nu,)}, found (2,)")
        data.ctrl[:] = ctrl
        mujoco.mj_step(model, data, nstep=self.frame_skip)
        mujoco.mj_rnePostConstraint(model, data)
        self.curr_path_length += 1
        for site in self._target_site_config:
            self._set_pos_site(*site)
        if self._did_see_sim_exception:
            assert self._last_stable_obs is not None
            return self._last_stable_obs, 0.0, False, False, dict(_INFO_AFTER_SIM_EXCEPTION)
        mujoco.mj_forward(model, data)
        space = self.sawyer_observation_space
        self._last_stable_obs = _clip(self._get_obs(), space.low, space.high, dtype=np.float64)
        reward, info = self.evaluate_state(self._last_stable_obs, action)
        truncate = self.curr_path_length == self.max_path_length
        return np.array(self._last_stable_obs, dtype=np.float64), reward, False, truncate, info

    def set_xyz_action(self, action: np.ndarray) -> None:
        data = self.data
        pos_delta = _clip(action, -1, 1) * self.action_scale
        new_mocap_pos = data.mocap_pos + pos_delta[None]
        new_mocap_pos[0, :] = _clip(new_mocap_pos[0, :], self.mocap_low, self.mocap_high)
        data.mocap_pos = new_mocap_pos
        data.mocap_quat = _MOCAP_QUAT

    def get_body_com(self, body_name: str) -> np.ndarray:
        return self.data.xpos[self._ids_of().body_id(body_name)]

    def get_endeff_pos(self) -> np.ndarray:
        return self.data.xpos[self._ids_of().hand]

    @property
    def tcp_center(self) -> np.ndarray:
        ids = self._ids_of()
        site_xpos = self.data.site_xpos
        return (site_xpos[ids.right_effector] + site_xpos[ids.left_effector]) / 2.0

    def _get_site_pos(self, site_name: str) -> np.ndarray:
        return self.data.site_xpos[self._ids_of().site_id(site_name)].copy()

    def _set_pos_site(self, name: str, pos: np.ndarray) -> None:
        assert isinstance(pos, np.ndarray)
        assert pos.ndim == 1
        self.data.site_xpos[self._ids_of().site_id(name)] = pos[:3]

    def touching_object(self, object_geom_id: int) -> bool:
        ids = self._ids_of()
        contact = self.data.contact
        if len(contact) == 0:
            return False
        geom1, geom2 = contact.geom1, contact.geom2
        with_object = (geom1 == object_geom_id) | (geom2 == object_geom_id)
        efc_force = self.data.efc_force
        forces = []
        for pad in (ids.left_pad_geom, ids.right_pad_geom):
            rows = np.flatnonzero(with_object & ((geom1 == pad) | (geom2 == pad)))
            total = 0  # summed in contact order, as Meta-World's sum() does
            for address in contact.efc_address[rows].tolist():
                total = total + efc_force[address]
            forces.append(total)
        return 0 < forces[0] and 0 < forces[1]

    def _get_curr_obs_combined_no_goal(self) -> np.ndarray:
        ids = self._ids_of()
        xpos = self.data.xpos
        observation = np.zeros(18)
        observation[0:3] = xpos[ids.hand]
        apart = xpos[ids.right_claw] - xpos[ids.left_claw]
        # np.linalg.norm of a 1-D float vector is sqrt(x.dot(x)); clip to [0, 1] after scaling by 0.1 m
        observation[3] = min(max(math.sqrt(apart.dot(apart)) / 0.1, 0.0), 1.0)
        positions = self._get_pos_objects()
        quaternions = self._get_quat_objects()
        assert len(positions) % 3 == 0 and len(quaternions) % 4 == 0
        for index in range(min(len(positions) // 3, len(quaternions) // 4)):
            start = 4 + 7 * index
            observation[start : start + 3] = positions[3 * index : 3 * index + 3]
            observation[start + 3 : start + 7] = quaternions[4 * index : 4 * index + 4]
        return observation

    def _get_obs(self) -> np.ndarray:
        goal = self._get_pos_goal()
        current = self._get_curr_obs_combined_no_goal()
        observation = np.empty(39)
        observation[0:18] = current
        observation[18:36] = self._prev_obs
        observation[36:39] = 0.0 if self._partially_observable else goal
        self._prev_obs = current
        return observation

    def _gripper_caging_reward(
        self,
        action: np.ndarray,
        obj_pos: np.ndarray,
        obj_radius: float,
        pad_success_thresh: float,
        object_reach_radius: float,
        xz_thresh: float,
        desired_gripper_effort: float = 1.0,
        high_density: bool = False,
        medium_density: bool = False,
    ) -> float:
        # SawyerXYZEnv._gripper_caging_reward's formula, with the scalar tolerance above.
        assert self.obj_init_pos is not None, "`obj_init_pos` must be initialized before calling this function."
        if high_density and medium_density:
            raise ValueError("Can only be either high_density or medium_density")
        xpos = self.data.xpos
        ids = self._ids_of()
        pad_y = (xpos[ids.body_id("leftpad")][1], xpos[ids.body_id("rightpad")][1])
        caging_lr = []
        for y in pad_y:
            to_obj = abs(y - obj_pos[1])
            to_obj_init = abs(y - self.obj_init_pos[1])
            caging_lr.append(
                _long_tail_tolerance(to_obj, obj_radius, pad_success_thresh, abs(to_obj_init - pad_success_thresh))
            )
        caging_y = hamacher_product(*caging_lr)

        tcp = self.tcp_center
        xz = [0, 2]
        caging_xz_margin = np.linalg.norm(self.obj_init_pos[xz] - self.init_tcp[xz]) - xz_thresh
        caging_xz = _long_tail_tolerance(np.linalg.norm(tcp[xz] - obj_pos[xz]), 0, xz_thresh, caging_xz_margin)

        gripper_closed = min(max(0, action[-1]), desired_gripper_effort) / desired_gripper_effort
        caging = hamacher_product(caging_y, float(caging_xz))
        gripping = gripper_closed if caging > 0.97 else 0.0
        caging_and_gripping = hamacher_product(caging, gripping)
        if high_density:
            caging_and_gripping = (caging_and_gripping + caging) / 2
        if medium_density:
            tcp_to_obj = np.linalg.norm(obj_pos - tcp)
            tcp_to_obj_init = np.linalg.norm(self.obj_init_pos - self.init_tcp)
            reach = _long_tail_tolerance(tcp_to_obj, 0, object_reach_radius, abs(tcp_to_obj_init - object_reach_radius))
            caging_and_gripping = (caging_and_gripping + float(reach)) / 2
        return caging_and_gripping
