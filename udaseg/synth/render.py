"""Ray casting a street scene: a pinhole camera, a z-buffer, and box / billboard primitives.

Every pixel gets one world ray (camera z component = 1, so the ray parameter t *is* the z-depth
along the optical axis). A primitive is tested only inside its projected screen bounding box
and painted where it is nearer than the z-buffer, so a frame costs O(objects x box area) numpy
work and no Python loop over pixels. World frame: X right, Y up (ground at Y = 0), Z along the
road; the camera sits at (x, height, 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from udaseg.synth.style import Style, fractal_noise

# SYNTHIA raw ids: the label codes used while rendering.
VOID, SKY, BUILDING, ROAD, SIDEWALK, FENCE, VEGETATION, POLE, CAR, SIGN = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
PERSON, BICYCLE, MOTORBIKE, LIGHT, TERRAIN, RIDER, BUS, WALL, LANEMARKING = 10, 11, 12, 15, 16, 17, 19, 21, 22

SKY_DEPTH = 655.35  # metres: 65535 cm, the largest value a SYNTHIA depth PNG holds
MAX_DEPTH = 655.0  # every surface is clipped below the sky value
NEAR = 0.05

Rgb = np.ndarray  # float32 [..., 3] in [0, 1]


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics (pixel centres at integer coordinates) and the pose over the road."""

    width: int
    height: int
    fx: float
    fy: float
    u0: float
    v0: float
    cam_height: float  # metres above the road
    pitch: float  # radians, positive = looking down
    yaw: float  # radians, positive = turned towards +X
    x: float  # lateral position, metres

    @staticmethod
    def from_fov(width: int, height: int, hfov_deg: float, cam_height: float, pitch_deg: float,
                 yaw_deg: float, x: float) -> "Camera":
        fx = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
        return Camera(width, height, float(fx), float(fx), (width - 1) / 2.0, (height - 1) / 2.0, cam_height,
                      float(np.radians(pitch_deg)), float(np.radians(yaw_deg)), x)

    @property
    def centre(self) -> np.ndarray:
        return np.array([self.x, self.cam_height, 0.0])

    @property
    def rotation(self) -> np.ndarray:
        """Columns: the camera's right, down and forward axes in world coordinates."""
        sp, cp, sy, cy = np.sin(self.pitch), np.cos(self.pitch), np.sin(self.yaw), np.cos(self.yaw)
        pitch = np.array([[1.0, 0.0, 0.0], [0.0, -cp, -sp], [0.0, -sp, cp]])  # columns r, d, f
        yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
        return yaw @ pitch

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points [N, 3] -> pixel (u, v) and z-depth."""
        pc = (points - self.centre) @ self.rotation
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.u0 + self.fx * pc[:, 0] / z, self.v0 + self.fy * pc[:, 1] / z, z


class Canvas:
    """Z-buffer plus label, instance and colour buffers for one frame."""

    def __init__(self, camera: Camera, style: Style, light: np.ndarray, tex_seed: int) -> None:
        h, w = camera.height, camera.width
        self.camera, self.style, self.light, self.tex_seed = camera, style, light, tex_seed
        self.depth = np.full((h, w), np.inf, np.float32)
        self.label = np.zeros((h, w), np.uint8)
        self.inst = np.zeros((h, w), np.uint16)
        self.rgb = np.zeros((h, w, 3), np.float32)
        xc = (np.arange(w, dtype=np.float64) - camera.u0) / camera.fx
        yc = (np.arange(h, dtype=np.float64) - camera.v0) / camera.fy
        self.rot = camera.rotation
        r = self.rot
        self.rays = np.stack([r[k, 0] * xc[None, :] + r[k, 1] * yc[:, None] + r[k, 2] for k in range(3)]).astype(np.float32)
        self.origin = camera.centre.astype(np.float32)

    # ------------------------------------------------------------------ helpers

    def window(self, corners: np.ndarray) -> tuple[slice, slice] | None:
        """Screen bounding box of world points; the whole frame when some lie behind the camera."""
        cam = self.camera
        pc = (corners - self.origin) @ self.rot
        z = pc[:, 2]
        h, w = cam.height, cam.width
        if np.all(z <= NEAR):
            return None
        if np.any(z <= NEAR):
            return slice(0, h), slice(0, w)
        u, v = cam.u0 + cam.fx * pc[:, 0] / z, cam.v0 + cam.fy * pc[:, 1] / z
        c0, c1 = int(np.floor(u.min())) - 1, int(np.ceil(u.max())) + 2
        r0, r1 = int(np.floor(v.min())) - 1, int(np.ceil(v.max())) + 2
        c0, c1, r0, r1 = max(c0, 0), min(c1, w), max(r0, 0), min(r1, h)
        if c0 >= c1 or r0 >= r1:
            return None
        win = slice(r0, r1), slice(c0, c1)
        if self.depth[win].max() < z.min():  # hidden behind what is already drawn
            return None
        return win

    def shade(self, normal_axis: np.ndarray | int, sign: np.ndarray | float) -> np.ndarray:
        """Lambert factor for axis-aligned normals (axis 0/1/2, sign +-1)."""
        lam = np.asarray(self.light, np.float32)[np.asarray(normal_axis)] * sign
        return (self.style.ambient + self.style.diffuse * np.maximum(lam, 0.0)).astype(np.float32)

    def write(self, win: tuple[slice, slice], upd: np.ndarray, t: np.ndarray, label: int | np.ndarray,
              inst: int, colour: np.ndarray) -> None:
        """Store the selected pixels of a window (colour: [n, 3] for the selected pixels, or [3])."""
        self.depth[win][upd] = t[upd]
        self.label[win][upd] = label[upd] if isinstance(label, np.ndarray) else label
        self.inst[win][upd] = inst
        self.rgb[win][upd] = colour

    def texture(self, a: np.ndarray, b: np.ndarray, scale: float, amount: float = 1.0, seed: int = 0) -> np.ndarray:
        """Multiplicative world-space texture factor (1 +- style.texture)."""
        if self.style.texture * amount == 0:
            return np.ones(np.shape(a), np.float32)
        return 1.0 + 2.0 * self.style.texture * amount * fractal_noise(a * scale, b * scale, self.tex_seed + seed)

    # ------------------------------------------------------------------ primitives

    def ground(self, labeller: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
        """The plane Y = 0; `labeller(X, Z)` -> (label, colour [.., 3]) per hit pixel."""
        dx, dy, dz = self.rays
        with np.errstate(divide="ignore"):
            t = np.where(dy < -1e-6, -self.origin[1] / dy, np.inf).astype(np.float32)
        hit = np.isfinite(t) & (t < 5000)
        upd = hit & (t < self.depth)
        if not upd.any():
            return
        tt = t[upd]
        x, z = self.origin[0] + tt * dx[upd], self.origin[2] + tt * dz[upd]
        label, colour = labeller(x, z)
        full = (slice(None), slice(None))
        lab = np.zeros_like(self.label)
        lab[upd] = label
        self.write(full, upd, t, lab, 0, colour * self.shade(1, 1.0))

    def box(self, lo: Sequence[float], hi: Sequence[float], label: int, inst: int,
            shader: Callable[[np.ndarray, np.ndarray], np.ndarray] | np.ndarray) -> None:
        """Axis-aligned box [lo, hi]; `shader(P [n,3], face_axis [n])` -> base colours, or a fixed colour."""
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        win = self.window(corners)
        if win is None:
            return
        d = self.rays[(slice(None),) + win]
        d = np.where(np.abs(d) < 1e-9, np.float32(1e-9), d)
        o = self.origin[:, None, None]
        t1 = (lo[:, None, None] - o) / d
        t2 = (hi[:, None, None] - o) / d
        tn = np.minimum(t1, t2)
        tmin, tmax = tn.max(axis=0), np.maximum(t1, t2).min(axis=0)
        upd = (tmax >= tmin) & (tmin > NEAR) & (tmin < self.depth[win])
        if not upd.any():
            return
        t = tmin[upd]
        axis = tn.argmax(axis=0)[upd]
        dsel = d[:, upd]
        p = (self.origin[:, None] + t[None, :] * dsel).T
        sign = -np.sign(dsel[axis, np.arange(len(t))])
        base = shader(p, axis) if callable(shader) else np.asarray(shader, np.float32)
        self.write(win, upd, tmin, label, inst, base * self.shade(axis, sign)[:, None])

    def billboard(self, axis: int, plane: float, centre: float, extent: tuple[float, float, float, float],
                  parts: Callable[[np.ndarray, np.ndarray], list[tuple[np.ndarray, int, int, np.ndarray]]],
                  shade: float | None = None) -> None:
        """A vertical plane (axis 2: Z = plane, facing the road; axis 0: X = plane, along the road).

        Local coordinates: u = X - centre (or Z - centre) and h = Y. `parts(u, h)` returns
        (mask, label, inst, colour) layers, later layers on top.
        """
        u0, u1, h0, h1 = extent
        if axis == 2:
            corners = np.array([[centre + a, b, plane] for a in (u0, u1) for b in (h0, h1)])
        else:
            corners = np.array([[plane, b, centre + a] for a in (u0, u1) for b in (h0, h1)])
        win = self.window(corners)
        if win is None:
            return
        d = self.rays[(axis,) + win]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((plane - self.origin[axis]) / d).astype(np.float32)
        other = 0 if axis == 2 else 2
        u = self.origin[other] + t * self.rays[(other,) + win] - centre
        h = self.origin[1] + t * self.rays[(1,) + win]
        valid = np.isfinite(t) & (t > NEAR) & (t < self.depth[win]) & (u >= u0) & (u <= u1) & (h >= h0) & (h <= h1)
        if not valid.any():
            return
        sign = -np.sign(np.mean(d))
        factor = self.shade(axis, sign) if shade is None else shade
        tex = np.ones(valid.shape, np.float32)
        if self.style.texture > 0:
            tex[valid] = self.texture(u[valid], h[valid], 6.0, 0.4)
        for mask, label, inst, colour in parts(u, h):
            m = mask & valid
            if not m.any():
                continue
            col = np.asarray(colour, np.float32)
            col = col[m] if col.ndim == 3 else col
            self.depth[win][m] = t[m]
            self.label[win][m] = label
            self.inst[win][m] = inst
            self.rgb[win][m] = col * (tex[m] * factor)[:, None]

    def sky(self, rng: np.random.Generator) -> np.ndarray:
        """Fill untouched pixels with a sky gradient (and clouds); returns the sky mask."""
        sky = ~np.isfinite(self.depth)
        dx, dy, dz = (r[sky] for r in self.rays)
        elev = dy / np.sqrt(dx * dx + dz * dz)
        s = np.clip(elev / 0.6, 0.0, 1.0)[:, None]
        top, hor = np.asarray(self.style.sky_top, np.float32), np.asarray(self.style.sky_horizon, np.float32)
        col = hor + (top - hor) * s
        if self.style.clouds > 0:
            az = np.arctan2(dx, dz)
            cl = np.clip(fractal_noise(az * 6.0, elev * 14.0, self.tex_seed + 99, octaves=3) * 2.5 + 0.2, 0, 1)
            col = col + (np.float32(0.95) - col) * (self.style.clouds * cl)[:, None] * 2.0
        self.rgb[sky] = np.clip(col, 0, 1)
        self.label[sky] = SKY
        self.depth[sky] = SKY_DEPTH
        return sky


# ---------------------------------------------------------------------- silhouettes (local metres)


def ellipse(u: np.ndarray, h: np.ndarray, cu: float, ch: float, ru: float, rh: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((h - ch) / rh) ** 2 <= 1.0


def rect(u: np.ndarray, h: np.ndarray, ua: float, ub: float, ha: float, hb: float) -> np.ndarray:
    return (u >= ua) & (u <= ub) & (h >= ha) & (h <= hb)


def segment(u: np.ndarray, h: np.ndarray, p: tuple[float, float], q: tuple[float, float], width: float) -> np.ndarray:
    """Points within width/2 of the segment p-q (a limb, a frame tube)."""
    du, dh = q[0] - p[0], q[1] - p[1]
    s = np.clip(((u - p[0]) * du + (h - p[1]) * dh) / (du * du + dh * dh + 1e-12), 0.0, 1.0)
    return (u - p[0] - s * du) ** 2 + (h - p[1] - s * dh) ** 2 <= (width / 2) ** 2


def ring(u: np.ndarray, h: np.ndarray, cu: float, ch: float, r_out: float, r_in: float) -> np.ndarray:
    d2 = (u - cu) ** 2 + (h - ch) ** 2
    return (d2 <= r_out * r_out) & (d2 >= r_in * r_in)
