"""Procedural streets in metres: a road with lanes and markings, raised sidewalks, façades at
varying setbacks, street furniture, vegetation, people and vehicles, rendered to one frame.

Sizes are real-world ones (car ~1.8 x 1.5 m, bus 2.55 x 3.2 m, person ~0.5 x 1.75 m, pole
0.15 m x 4-8 m), so each class lands at the image rows and depths a pinhole camera really
sees it at: that relation is the prior the UDA method transfers from source to target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from udaseg.synth.config import CameraConfig, ObjectRates
from udaseg.synth.render import (BICYCLE, BUILDING, BUS, CAR, FENCE, LANEMARKING, LIGHT, MAX_DEPTH, MOTORBIKE,
                                 PERSON, POLE, RIDER, ROAD, SIDEWALK, SIGN, TERRAIN, VEGETATION, VOID, WALL,
                                 Camera, Canvas, ellipse, rect, ring, segment)
from udaseg.synth.style import Style, finish, fractal_noise

CURB = 0.15


@dataclass
class Frame:
    """One rendered image: RGB, SYNTHIA raw label ids, instance ids, z-depth (m) and its camera."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # uint8 [H, W], SYNTHIA raw ids
    inst: np.ndarray  # uint16 [H, W]
    depth: np.ndarray  # float32 [H, W], metres; sky = SKY_DEPTH
    sky: np.ndarray  # bool [H, W]
    camera: Camera


class _Painter:
    """Scene sampler + drawer for one frame; holds the rng, palette and layout."""

    def __init__(self, rng: np.random.Generator, canvas: Canvas, rates: ObjectRates, lanes_half: float,
                 parking: float, lane_w: float, lanes: int, sidewalk: tuple[float, float],
                 cross: tuple[float, float] | None) -> None:
        self.rng, self.cv, self.rates = rng, canvas, rates
        self.lanes_half, self.parking = lanes_half, parking  # driving lanes half-width, parking strip width
        self.road_half, self.lane_w, self.lanes = lanes_half + parking, lane_w, lanes
        self.sidewalk = sidewalk  # width per side (left, right)
        self.cross = cross  # (z0, z1) of a cross street, or None
        self.next_inst = 1
        self.shadow_boxes: list[tuple[float, float, float, float, float]] = []  # x0, x1, z0, z1, height

    # -------------------------------------------------------------- utilities

    def inst(self) -> int:
        self.next_inst += 1
        return self.next_inst - 1

    def colour(self, material: str) -> np.ndarray:
        options = self.cv.style.palette[material]
        r = self.rng.random(4)
        base = np.asarray(options[int(r[0] * len(options))], np.float32)
        j = self.cv.style.colour_jitter
        return np.minimum(base * (1 - j + 2 * j * r[1:]).astype(np.float32), 1.0)

    def in_cross(self, z0: float, z1: float, margin: float = 0.0) -> bool:
        return self.cross is not None and z1 > self.cross[0] - margin and z0 < self.cross[1] + margin

    def positions(self, z0: float, z1: float, mean_gap: float, length: float) -> list[float]:
        """Centres of non-overlapping objects along a line, gaps exponential with the given mean."""
        out, z = [], z0 + self.rng.exponential(mean_gap)
        while z < z1:
            out.append(z)
            z += length + 0.5 + self.rng.exponential(mean_gap)
        return out

    def side_x(self, side: int, offset: float) -> float:
        """X of a point `offset` metres outwards from the curb line on side -1 (left) / +1 (right)."""
        return side * (self.road_half + offset)

    def sw(self, side: int) -> float:
        return self.sidewalk[0 if side < 0 else 1]

    # -------------------------------------------------------------- ground

    def draw_ground(self, sw_style: dict[int, int], setback_label: dict[int, int]) -> None:
        rh, lh, lw, style = self.road_half, self.lanes_half, self.lane_w, self.cv.style
        road_col = self.colour("road")
        mark_col = self.colour("lanemarking")
        cross = self.cross
        tex_seed = self.rng.integers(1 << 30)

        def labeller(x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ax = np.abs(x)
            in_cross = (z > cross[0]) & (z < cross[1]) if cross else np.zeros(x.shape, bool)
            lane_pos = (x + lh) / lw
            divider = (np.abs(lane_pos - np.round(lane_pos)) * lw < 0.07) & (np.mod(z, 9.0) < 3.0) & (ax < lh - 1.0)
            centre = (np.abs(x) < 0.08) & (self.lanes % 2 == 0)
            edge_at = lh if self.parking > 0 else rh - 0.35
            edge = (ax > edge_at - 0.07) & (ax < edge_at + 0.07)
            marks = (divider | centre | edge) & ~in_cross
            if cross:
                zebra = (z > cross[0] - 5.0) & (z < cross[0] - 1.0) & (np.mod(x, 1.0) < 0.5) & (ax < rh - 0.5)
                marks |= zebra
            label = np.where(marks, LANEMARKING, ROAD).astype(np.uint8)
            tex = 1.0 + 2.0 * style.texture * fractal_noise(x * 1.5, z * 1.5, int(tex_seed))
            col = np.where(marks[:, None], mark_col, road_col) * tex[:, None]
            return label, col.astype(np.float32)

        self.cv.ground(labeller)
        # raised sidewalks (curb face and top), then what lies between sidewalk and façades
        for side in (-1, 1):
            w = self.sw(side)
            spans = [(-40.0, 400.0)]
            if cross:
                spans = [(-40.0, cross[0]), (cross[1], 400.0)]
            for z0, z1 in spans:
                x0, x1 = sorted((self.side_x(side, 0.0), self.side_x(side, w)))
                self._slab(x0, x1, z0, z1, SIDEWALK, sw_style[side])
                x0, x1 = sorted((self.side_x(side, w), self.side_x(side, w + 60.0)))
                self._slab(x0, x1, z0, z1, setback_label[side], sw_style[side])

    def _slab(self, x0: float, x1: float, z0: float, z1: float, label: int, pattern: int) -> None:
        base = self.colour("sidewalk" if label == SIDEWALK else "terrain")
        seed = int(self.rng.integers(1 << 30))
        style = self.cv.style

        def shader(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
            tex = 1.0 + 2.0 * style.texture * fractal_noise(p[:, 0] * 2.0, p[:, 2] * 2.0, seed)
            if label == SIDEWALK and pattern:  # paving slabs
                joint = (np.mod(p[:, 0], 1.0) < 0.04) | (np.mod(p[:, 2], 1.0) < 0.04)
                tex = tex * np.where(joint & (axis == 1), 0.8, 1.0)
            return base * tex[:, None]

        self.cv.box((x0, 0.0, z0), (x1, CURB, z1), label, 0, shader)

    # -------------------------------------------------------------- buildings

    def draw_buildings(self, setback: dict[int, float]) -> None:
        for side in (-1, 1):
            z = -30.0
            while z < 260.0:
                width = self.rng.uniform(8.0, 30.0)
                if self.in_cross(z, z + width, margin=1.0):
                    z = self.cross[1] + 1.0 + self.rng.uniform(0, 3)
                    continue
                if self.rng.random() < 0.12:  # a gap between blocks
                    z += self.rng.uniform(2.0, 8.0)
                    continue
                off = self.sw(side) + setback[side] + self.rng.choice([0.0, 0.0, 0.0, self.rng.uniform(0.5, 4.0)])
                height = self.rng.uniform(6.0, 30.0) if self.rng.random() < 0.8 else self.rng.uniform(30.0, 60.0)
                depth = self.rng.uniform(10.0, 20.0)
                self.building(side, off, depth, z, z + width, height)
                if self.rng.random() < 0.35:  # a taller row behind
                    self.building(side, off + depth + self.rng.uniform(3, 20), 15.0, z, z + width,
                                  height + self.rng.uniform(5.0, 40.0))
                z += width
        if self.rng.random() < 0.6:  # the street ends at a façade
            zf = self.rng.uniform(90.0, 250.0)
            self.building(1, -80.0, 20.0, zf, zf + 20.0, self.rng.uniform(10.0, 40.0), across=True)

    def building(self, side: int, offset: float, depth: float, z0: float, z1: float, height: float,
                 across: bool = False) -> None:
        base = self.colour("building")
        win_col = self.colour("window")
        floor_h = self.rng.uniform(2.8, 3.6)
        spacing = self.rng.uniform(2.0, 4.0)
        win_w = self.rng.uniform(0.35, 0.65)
        shop = self.rng.random() < 0.5
        seed = int(self.rng.integers(1 << 30))
        style = self.cv.style

        def shader(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
            s = np.where(axis == 0, p[:, 2], p[:, 0])
            y = p[:, 1]
            win = ((np.mod(y - 0.8, floor_h) / floor_h > 0.35) & (np.mod(y - 0.8, floor_h) / floor_h < 0.8)
                   & (np.mod(s, spacing) / spacing < win_w) & (y > 3.0) & (y < height - 1.0) & (axis != 1))
            if shop:
                win |= (y > 0.5) & (y < 2.5) & (np.mod(s, 6.0) < 4.5) & (axis != 1)
            tex = 1.0 + 2.0 * style.texture * fractal_noise(s * 0.7, y * 0.7, seed)
            return np.where(win[:, None], win_col, base * tex[:, None]).astype(np.float32)

        if across:
            lo, hi = (offset, 0.0, z0), (-offset, height, z1)
        else:
            x0, x1 = sorted((self.side_x(side, offset), self.side_x(side, offset + depth)))
            lo, hi = (x0, 0.0, z0), (x1, height, z1)
        self.cv.box(lo, hi, BUILDING, self.inst(), shader)
        self.shadow_boxes.append((lo[0], hi[0], z0, z1, height))

    # -------------------------------------------------------------- street furniture and nature

    def draw_edge(self, side: int, setback: float) -> None:
        """Walls, fences and hedges along the outer sidewalk edge."""
        r = self.rates
        x_edge = self.side_x(side, self.sw(side) + 0.15)
        z = self.rng.uniform(-10.0, 10.0)
        while z < 150.0:
            length = self.rng.uniform(4.0, 25.0)
            if self.in_cross(z, z + length, 2.0):
                z = self.cross[1] + 2.0
                continue
            kind = self.rng.choice(4, p=np.array([0.3 * r.walls, 0.3 * r.fences, 0.12 * r.trees, 0.6])
                                   / (0.3 * r.walls + 0.3 * r.fences + 0.12 * r.trees + 0.6))
            if kind == 0 and setback > 0.3:
                t = 0.25
                x0, x1 = sorted((x_edge, x_edge + side * t))
                hgt = self.rng.uniform(0.8, 3.0)
                col = self.colour("wall")
                seed = int(self.rng.integers(1 << 30))
                style = self.cv.style

                def wall_shader(p: np.ndarray, axis: np.ndarray, col=col, seed=seed) -> np.ndarray:
                    tex = 1.0 + 2.0 * style.texture * fractal_noise(p[:, 2] * 1.5, p[:, 1] * 1.5, seed)
                    return col * tex[:, None]

                self.cv.box((x0, CURB, z), (x1, CURB + hgt, z + length), WALL, self.inst(), wall_shader)
            elif kind == 1 and setback > 0.3:
                self.fence(x_edge, z, length)
            elif kind == 2 and setback > 0.8:
                t = self.rng.uniform(0.6, 1.2)
                x0, x1 = sorted((x_edge, x_edge + side * t))
                col = self.colour("vegetation")
                seed = int(self.rng.integers(1 << 30))
                style = self.cv.style

                def hedge_shader(p: np.ndarray, axis: np.ndarray, col=col, seed=seed) -> np.ndarray:
                    tex = 1.0 + 3.0 * style.texture * fractal_noise(p[:, 2] * 4 + p[:, 0] * 4, p[:, 1] * 4, seed)
                    return col * tex[:, None]

                self.cv.box((x0, CURB, z), (x1, CURB + self.rng.uniform(0.8, 1.6), z + length), VEGETATION, 0,
                            hedge_shader)
            z += length + self.rng.uniform(0.0, 15.0)

    def fence(self, x: float, z0: float, length: float) -> None:
        hgt = self.rng.uniform(1.0, 2.0)
        col = self.colour("fence")
        period = self.rng.uniform(0.12, 0.3)
        duty = self.rng.uniform(0.25, 0.6)
        inst = self.inst()

        def parts(u: np.ndarray, h: np.ndarray):
            bars = np.mod(u, period) < duty * period
            rails = (np.abs(h - (CURB + hgt - 0.05)) < 0.05) | (np.abs(h - (CURB + 0.2)) < 0.05)
            posts = np.mod(u, 2.5) < 0.1
            return [(bars | rails | posts, FENCE, inst, col)]

        self.cv.billboard(0, x, z0, (0.0, length, CURB, CURB + hgt), parts)

    def draw_poles(self, side: int) -> None:
        x = self.side_x(side, 0.45)
        for z in self.positions(-5.0, 200.0, 18.0 / max(self.rates.poles, 1e-3), 1.0):
            if self.in_cross(z, z, 1.0):
                continue
            kind = self.rng.choice(3, p=[0.5, 0.25, 0.25])
            if kind == 0:
                self.lamp(x, z, side)
            elif kind == 1:
                self.sign(x, z)
            else:
                self.traffic_light(x, z, side)
        if self.cross is not None:  # traffic lights at the near corner of a cross street
            self.traffic_light(x, self.cross[0] - 1.0, side, arm=self.rng.random() < 0.5)

    def pole(self, x: float, z: float, height: float, width: float = 0.15) -> int:
        inst = self.inst()
        self.cv.box((x - width / 2, CURB, z - width / 2), (x + width / 2, CURB + height, z + width / 2), POLE, inst,
                    self.colour("pole"))
        return inst

    def lamp(self, x: float, z: float, side: int) -> None:
        h = self.rng.uniform(5.0, 8.0)
        self.pole(x, z, h)
        arm = self.rng.uniform(0.8, 2.0)
        x0, x1 = sorted((x, x - side * arm))
        col = self.colour("pole")
        self.cv.box((x0, CURB + h - 0.12, z - 0.06), (x1, CURB + h, z + 0.06), POLE, 0, col)
        xe = x - side * arm
        self.cv.box((xe - 0.3, CURB + h - 0.2, z - 0.15), (xe + 0.3, CURB + h - 0.05, z + 0.15), POLE, 0, col)

    def sign(self, x: float, z: float) -> None:
        h = self.rng.uniform(2.0, 3.0)
        self.pole(x, z, h + 0.3, 0.1)
        col = self.colour("sign")
        shape = self.rng.integers(3)
        size = self.rng.uniform(0.5, 0.8)
        cy = CURB + h
        inst = self.inst()

        def parts(u: np.ndarray, hh: np.ndarray):
            if shape == 0:
                m = ellipse(u, hh, 0.0, cy, size / 2, size / 2)
            elif shape == 1:
                m = rect(u, hh, -size / 2, size / 2, cy - size / 2, cy + size / 2)
            else:
                m = (hh >= cy - size / 2) & (np.abs(u) <= (cy + size / 2 - hh) * 0.58)
            return [(m, SIGN, inst, col)]

        self.cv.billboard(2, z - 0.1, x, (-size / 2, size / 2, cy - size / 2, cy + size / 2), parts, shade=1.0)

    def traffic_light(self, x: float, z: float, side: int, arm: bool = False) -> None:
        h = self.rng.uniform(2.8, 4.5) if not arm else self.rng.uniform(5.0, 6.5)
        self.pole(x, z, h)
        box_col = self.colour("light")
        lamp = np.asarray([(0.9, 0.1, 0.1), (0.95, 0.7, 0.1), (0.1, 0.9, 0.3)][self.rng.integers(3)], np.float32)
        spots = [(x, CURB + h - 0.05)]
        if arm:
            length = self.rng.uniform(3.0, min(7.0, self.road_half + 1.0))
            x0, x1 = sorted((x, x - side * length))
            self.cv.box((x0, CURB + h - 0.15, z - 0.07), (x1, CURB + h, z + 0.07), POLE, 0, self.colour("pole"))
            spots.append((x - side * length * 0.8, CURB + h - 0.1))
        for lx, top in spots:
            inst = self.inst()
            lo, hi = (lx - 0.17, top - 0.95, z - 0.35), (lx + 0.17, top, z - 0.07)

            def shader(p: np.ndarray, axis: np.ndarray, lx=lx, top=top) -> np.ndarray:
                on = (axis == 2) & ((p[:, 0] - lx) ** 2 + (p[:, 1] - (top - 0.5)) ** 2 < 0.1 ** 2)
                return np.where(on[:, None], lamp * 1.3, box_col).astype(np.float32)

            self.cv.box(lo, hi, LIGHT, inst, shader)

    def draw_trees(self, side: int, setback: float) -> None:
        offset = self.sw(side) - 0.7 if setback < 1.5 else self.sw(side) + setback / 2
        x = self.side_x(side, offset)
        for z in self.positions(-5.0, 160.0, 10.0 / max(self.rates.trees, 1e-3), 5.0):
            if self.in_cross(z, z, 3.0):
                continue
            trunk_h = self.rng.uniform(1.8, 3.2)
            tw = self.rng.uniform(0.2, 0.4)
            inst = self.inst()
            self.cv.box((x - tw / 2, CURB, z - tw / 2), (x + tw / 2, CURB + trunk_h, z + tw / 2), VEGETATION, inst,
                        self.colour("trunk"))
            ru, rh = self.rng.uniform(1.3, 3.0), self.rng.uniform(1.5, 3.2)
            ch = CURB + trunk_h + rh * 0.8
            p1, p2 = self.rng.uniform(0, 2 * np.pi, 2)
            col = self.colour("vegetation")
            seed = int(self.rng.integers(1 << 30))

            def parts(u: np.ndarray, h: np.ndarray, ru=ru, rh=rh, ch=ch, p1=p1, p2=p2, col=col, seed=seed):
                e = (u / ru) ** 2 + ((h - ch) / rh) ** 2
                cand = e <= 1.9  # noise only where the ragged outline can reach
                uc, hc = u[cand], h[cand]
                a = np.arctan2(hc - ch, uc)
                r = 1.0 + 0.12 * np.sin(3 * a + p1) + 0.08 * np.sin(7 * a + p2) + 0.5 * fractal_noise(uc * 3.0, hc * 3.0, seed)
                m = np.zeros(u.shape, bool)
                m[cand] = e[cand] <= r * r
                shade = np.ones(u.shape, np.float32)
                shade[cand] = 1.0 + 1.5 * fractal_noise(uc * 5.0, hc * 5.0, seed + 1)
                return [(m, VEGETATION, inst, col * shade[..., None])]

            self.cv.billboard(2, z, x, (-ru * 1.5, ru * 1.5, ch - rh * 1.5, ch + rh * 1.5), parts)

    def draw_clutter(self, side: int) -> None:
        for _ in range(self.rng.poisson(1.5 * self.rates.clutter)):
            x = self.side_x(side, self.rng.uniform(0.4, self.sw(side) - 0.3))
            z = self.rng.uniform(2.0, 80.0)
            w, h = self.rng.uniform(0.3, 0.7), self.rng.uniform(0.5, 1.2)
            self.cv.box((x - w / 2, CURB, z - w / 2), (x + w / 2, CURB + h, z + w / 2), VOID, 0, self.colour("clutter"))

    # -------------------------------------------------------------- people

    def person_parts(self, height: float, base: float, label: int, inst: int, seated: bool = False):
        skin, shirt, legs = self.colour("skin"), self.colour("clothes"), self.colour("clothes") * 0.7
        stride = self.rng.uniform(0.0, 0.1)
        hb = height + base

        def parts(u: np.ndarray, h: np.ndarray):
            head = ellipse(u, h, 0.0, hb - 0.12, 0.10, 0.125)
            torso = (ellipse(u, h, 0.0, hb - 0.34, 0.22, 0.12) | rect(u, h, -0.2, 0.2, base + 0.5 * height, hb - 0.34)
                     | rect(u, h, -0.27, -0.19, base + 0.45 * height, hb - 0.32)
                     | rect(u, h, 0.19, 0.27, base + 0.45 * height, hb - 0.32))
            if seated:
                leg = rect(u, h, -0.2, -0.05, base + 0.05, base + 0.5 * height) | rect(u, h, 0.05, 0.2, base + 0.05, base + 0.5 * height)
            else:
                leg = (rect(u, h, -0.17 - stride, -0.02, base, base + 0.5 * height)
                       | rect(u, h, 0.02, 0.17 + stride, base, base + 0.5 * height))
            return [(leg, label, inst, legs), (torso, label, inst, shirt), (head, label, inst, skin)]

        return parts

    def draw_persons(self) -> None:
        for side in (-1, 1):
            for z in self.positions(1.0, 90.0, 12.0 / max(self.rates.persons, 1e-3), 0.6):
                x = self.side_x(side, self.rng.uniform(0.5, max(0.6, self.sw(side) - 0.4)))
                self.person(x, z, CURB)
        n_cross = self.rng.poisson(0.8 * self.rates.persons)
        for _ in range(n_cross):
            z = (self.cross[0] - self.rng.uniform(1.5, 4.5)) if self.cross else self.rng.uniform(5.0, 40.0)
            self.person(self.rng.uniform(-self.road_half, self.road_half), z, 0.0)

    def person(self, x: float, z: float, base: float) -> None:
        height = self.rng.uniform(1.55, 1.92)
        inst = self.inst()
        self.cv.billboard(2, z, x, (-0.35, 0.35, base, base + height + 0.02),
                          self.person_parts(height, base, PERSON, inst))

    def cycle_parts(self, kind: int, inst: int, direction: float, rider: int | None):
        """Side view of a bicycle (kind 0) or motorbike (kind 1), optionally with a rider."""
        frame_col, tyre = self.colour("vehicle"), self.colour("tyre")
        skin, shirt, trousers = self.colour("skin"), self.colour("clothes"), self.colour("clothes") * 0.7
        label = BICYCLE if kind == 0 else MOTORBIKE
        rider_inst = self.inst() if rider else 0

        def parts(u: np.ndarray, h: np.ndarray):
            u = u * direction
            if kind == 0:
                wheels = ring(u, h, -0.52, 0.34, 0.34, 0.27) | ring(u, h, 0.52, 0.34, 0.34, 0.27)
                frame = (segment(u, h, (-0.52, 0.34), (-0.15, 0.85), 0.05) | segment(u, h, (-0.52, 0.34), (0.0, 0.34), 0.05)
                         | segment(u, h, (0.0, 0.34), (-0.15, 0.85), 0.05) | segment(u, h, (0.0, 0.34), (0.4, 0.85), 0.05)
                         | segment(u, h, (-0.15, 0.85), (0.4, 0.85), 0.05) | segment(u, h, (0.4, 0.85), (0.52, 0.34), 0.05)
                         | segment(u, h, (0.4, 0.85), (0.35, 1.0), 0.05) | rect(u, h, -0.25, -0.05, 0.85, 0.92))
                layers = [(wheels, label, inst, tyre), (frame, label, inst, frame_col)]
                seat, shoulder, head, hand, foot = (-0.15, 0.92), (0.1, 1.42), (0.18, 1.6), (0.35, 1.0), (0.0, 0.4)
            else:
                wheels = ellipse(u, h, -0.7, 0.31, 0.31, 0.31) | ellipse(u, h, 0.7, 0.31, 0.31, 0.31)
                body = (ellipse(u, h, 0.0, 0.6, 0.6, 0.22) | ellipse(u, h, 0.15, 0.78, 0.3, 0.12)
                        | segment(u, h, (0.7, 0.31), (0.5, 1.05), 0.08) | rect(u, h, -0.55, 0.0, 0.75, 0.85))
                layers = [(wheels, label, inst, tyre), (body, label, inst, frame_col)]
                seat, shoulder, head, hand, foot = (-0.2, 0.88), (0.05, 1.42), (0.12, 1.6), (0.45, 1.02), (0.1, 0.45)
            if rider:
                person = (segment(u, h, seat, shoulder, 0.32) | ellipse(u, h, head[0], head[1], 0.11, 0.13)
                          | segment(u, h, shoulder, hand, 0.09) | segment(u, h, seat, foot, 0.15))
                layers.append((person, RIDER, rider_inst, shirt))
                layers.append((segment(u, h, seat, foot, 0.15), RIDER, rider_inst, trousers))
                layers.append((ellipse(u, h, head[0], head[1], 0.11, 0.13), RIDER, rider_inst, skin))
            return layers

        return parts

    def rear_cycle_parts(self, kind: int, inst: int, height: float):
        """A bicycle or motorbike with its rider seen from behind (riding ahead in a lane)."""
        tyre, body_col = self.colour("tyre"), self.colour("vehicle")
        label = BICYCLE if kind == 0 else MOTORBIKE
        rider_inst = self.inst()
        person = self.person_parts(height - 0.55, 0.55 if kind == 0 else 0.5, RIDER, rider_inst, seated=True)

        def parts(u: np.ndarray, h: np.ndarray):
            if kind == 0:
                bike = ellipse(u, h, 0.0, 0.34, 0.035, 0.34) | rect(u, h, -0.3, 0.3, 1.0, 1.05)
                layers = [(bike, label, inst, tyre)]
            else:
                bike = ellipse(u, h, 0.0, 0.31, 0.09, 0.31)
                body = rect(u, h, -0.3, 0.3, 0.35, 0.85) | rect(u, h, -0.4, 0.4, 1.0, 1.05)
                layers = [(bike, label, inst, tyre), (body, label, inst, body_col)]
            return person(u, h) + layers

        return parts

    def draw_riders(self) -> None:
        for _ in range(self.rng.poisson(0.9 * self.rates.riders)):
            kind = int(self.rng.integers(2))
            inst = self.inst()
            if self.rng.random() < 0.5:  # riding ahead in a lane, seen from behind
                lane = self.rng.integers(self.lanes)
                x = -self.lanes_half + (lane + 0.5) * self.lane_w + self.rng.uniform(-0.8, 0.8)
                z = self.rng.uniform(6.0, 60.0)
                height = self.rng.uniform(1.6, 1.8)
                self.cv.billboard(2, z, x, (-0.45, 0.45, 0.0, height + 0.05), self.rear_cycle_parts(kind, inst, height))
            else:  # crossing, seen from the side
                z = (self.cross[0] + self.rng.uniform(0.5, 5.0)) if self.cross else self.rng.uniform(6.0, 50.0)
                x = self.rng.uniform(-self.road_half, self.road_half)
                self.cv.billboard(2, z, x, (-1.1, 1.1, 0.0, 1.8),
                                  self.cycle_parts(kind, inst, float(self.rng.choice([-1.0, 1.0])), rider=1))

    def draw_parked_cycles(self) -> None:
        for _ in range(self.rng.poisson(1.0 * self.rates.bikes)):
            side = int(self.rng.choice([-1, 1]))
            kind = int(self.rng.integers(2))
            x = self.side_x(side, self.rng.uniform(0.7, max(0.8, self.sw(side) - 0.5)))
            z = self.rng.uniform(2.0, 50.0)
            inst = self.inst()
            parts = self.cycle_parts(kind, inst, float(self.rng.choice([-1.0, 1.0])), rider=None)
            self.cv.billboard(0, x, z, (-1.1, 1.1, 0.0, 1.3), lambda u, h, p=parts: p(u, h - CURB))

    # -------------------------------------------------------------- vehicles

    def vehicle(self, x: float, z: float, bus: bool) -> None:
        rng = self.rng
        if bus:
            w, length, height, clearance = 2.55, rng.uniform(10.0, 12.5), rng.uniform(3.0, 3.3), 0.35
            col, label = self.colour("bus"), BUS
        else:
            w, length, height, clearance = rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.9), rng.uniform(1.4, 1.6), 0.3
            col, label = self.colour("vehicle"), CAR
        glass, tyre = self.colour("glass"), self.colour("tyre")
        inst = self.inst()
        x0, x1, z0, z1 = x - w / 2, x + w / 2, z - length / 2, z + length / 2
        belt = height * (0.62 if not bus else 0.45)

        def body_shader(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
            y = p[:, 1]
            lights = (axis == 2) & (y > belt - 0.25) & (y < belt - 0.1) & (np.abs(p[:, 0] - x) > w / 2 - 0.35)
            out = np.where(lights[:, None], np.float32([0.8, 0.1, 0.08]), col)
            if bus:
                windows = (y > belt) & (y < height - 0.3) & (axis != 1)
                out = np.where(windows[:, None], glass, out)
            return out.astype(np.float32)

        near_z = max(float(((np.array([x, 0.0, z0]) - self.cv.origin) @ self.cv.rot)[2]), 0.1)
        detailed = self.cv.camera.fy * height / near_z > 10.0  # small on screen: no wheels (level of detail)
        self.cv.box((x0, clearance if detailed else 0.1, z0), (x1, belt if not bus else height, z1), label, inst,
                    body_shader)
        if not bus:
            cz0, cz1 = z0 + length * rng.uniform(0.1, 0.2), z1 - length * rng.uniform(0.25, 0.35)

            def cabin_shader(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
                frame = (p[:, 1] > height - 0.08) | (axis == 1)
                return np.where(frame[:, None], col, glass).astype(np.float32)

            self.cv.box((x0 + 0.08, belt, cz0), (x1 - 0.08, height, cz1), label, inst, cabin_shader)
        r = 0.33 if not bus else 0.5
        for wz in ((z0 + r + 0.4, z1 - r - 0.4) if detailed else ()):
            for wx in (x0 + 0.02, x1 - 0.24):
                self.cv.box((wx, 0.0, wz - r), (wx + 0.22, 2 * r, wz + r), label, inst, tyre)
        self.shadow_boxes.append((x0, x1, z0, z1, height))

    def draw_vehicles(self) -> None:
        r = self.rates
        for lane in range(self.lanes):
            x = -self.lanes_half + (lane + 0.5) * self.lane_w
            start = 6.0 if abs(x - self.cv.camera.x) < 2.4 else -2.0
            for z in self.positions(start, 120.0, 30.0 / max(r.cars, 1e-3), 5.0):
                self.vehicle(x + self.rng.uniform(-0.3, 0.3), z + 2.5, bus=False)
        if self.rng.random() < min(0.9, 0.3 * r.buses):
            lane = int(self.rng.integers(self.lanes))
            x = -self.lanes_half + (lane + 0.5) * self.lane_w
            z = self.rng.uniform(12.0 if abs(x - self.cv.camera.x) < 2.4 else 4.0, 70.0)
            self.vehicle(x, z + 6.0, bus=True)
        for side in (-1, 1):  # parked along the curbs
            if self.parking > 0 and self.rng.random() < 0.8:
                x = self.side_x(side, -self.parking / 2 - 0.05)
                for z in self.positions(-3.0, 100.0, 5.0 / max(r.cars, 1e-3), 5.0):
                    if not self.in_cross(z - 3.0, z + 3.0, 4.0):
                        self.vehicle(x, z + 2.5, bus=False)

    # -------------------------------------------------------------- shadows

    def cast_shadows(self) -> None:
        """Darken ground pixels under the shadows of buildings and vehicles (axis-aligned hulls)."""
        strength = self.cv.style.shadows
        light = self.cv.light
        if strength <= 0 or light[1] <= 0.05 or not self.shadow_boxes:
            return
        lab = self.cv.label
        ground = np.isin(lab, (ROAD, LANEMARKING, SIDEWALK, TERRAIN))
        t = self.cv.depth[ground]
        px, py, pz = (self.cv.origin[k] + t * self.cv.rays[k][ground] for k in range(3))
        flat = py < CURB + 0.01
        dark = np.zeros(px.shape, bool)
        sx, sz = -light[0] / light[1], -light[2] / light[1]
        for x0, x1, z0, z1, h in self.shadow_boxes:
            ax0, ax1 = min(x0, x0 + sx * h), max(x1, x1 + sx * h)
            az0, az1 = min(z0, z0 + sz * h), max(z1, z1 + sz * h)
            dark |= (px > ax0) & (px < ax1) & (pz > az0) & (pz < az1)
        dark &= flat
        factor = np.where(dark, 1.0 - strength, 1.0).astype(np.float32)
        self.cv.rgb[ground] *= factor[:, None]


def render_frame(rng: np.random.Generator, size: tuple[int, int], cam_cfg: CameraConfig, rates: ObjectRates,
                 style: Style) -> Frame:
    """Sample a street and render it: everything depends on `rng` only."""
    width, height = size
    lanes = int(rng.integers(2, 5))
    lane_w = float(rng.uniform(3.0, 3.6))
    lanes_half = lanes * lane_w / 2
    parking = float(rng.uniform(2.0, 2.5)) if rng.random() < 0.6 else 0.0
    if cam_cfg.lateral == "lane":
        lane = int(rng.integers(lanes // 2, lanes))
        cam_x = -lanes_half + (lane + 0.5) * lane_w + float(rng.uniform(-0.3, 0.3))
    else:
        cam_x = float(rng.uniform(-lanes_half + 0.8, lanes_half - 0.8))
    camera = Camera.from_fov(width, height, cam_cfg.hfov, float(rng.uniform(*cam_cfg.height)),
                             float(rng.uniform(*cam_cfg.pitch)), float(rng.uniform(-cam_cfg.yaw, cam_cfg.yaw)), cam_x)
    elev, azim = rng.uniform(np.radians(25), np.radians(65)), rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(elev) * np.sin(azim), np.sin(elev), np.cos(elev) * np.cos(azim)], np.float32)
    canvas = Canvas(camera, style, light, int(rng.integers(1 << 30)))
    sidewalk = (float(rng.uniform(2.0, 5.0)), float(rng.uniform(2.0, 5.0)))
    cross = None
    if rng.random() < 0.45:
        z0 = float(rng.uniform(15.0, 70.0))
        cross = (z0, z0 + float(rng.uniform(8.0, 16.0)))
    p = _Painter(rng, canvas, rates, lanes_half, parking, lane_w, lanes, sidewalk, cross)
    setback = {s: float(rng.choice([0.0, rng.uniform(0.5, 3.0), rng.uniform(2.0, 8.0)])) for s in (-1, 1)}
    setback_label = {s: int(TERRAIN if rng.random() < 0.4 else SIDEWALK) for s in (-1, 1)}
    sw_pattern = {s: int(rng.random() < 0.5) for s in (-1, 1)}
    # nearer things first: the z-test then rejects most far pixels early
    p.draw_vehicles()
    p.draw_riders()
    p.draw_persons()
    p.draw_parked_cycles()
    for side in (-1, 1):
        p.draw_poles(side)
        p.draw_clutter(side)
        p.draw_trees(side, setback[side])
        p.draw_edge(side, setback[side])
    p.draw_ground(sw_pattern, setback_label)
    p.draw_buildings(setback)
    sky = canvas.sky(rng)
    p.cast_shadows()
    depth = np.where(sky, canvas.depth, np.minimum(canvas.depth, MAX_DEPTH)).astype(np.float32)
    rgb = finish(canvas.rgb, depth, sky, style, rng)
    return Frame(rgb=rgb, label=canvas.label, inst=canvas.inst, depth=depth, sky=sky, camera=camera)
