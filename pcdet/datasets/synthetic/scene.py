"""Random street scenes for the synthetic LiDAR generator: road geometry, object shapes, placement, presets.

Frames: LiDAR (x forward, y left, z up, sensor at the origin, 1.73 m above the road under it) and a road frame
(u along the road, v lateral to its left) rotated by the road angle ``theta`` about z. Objects are assemblies of
primitives (see ``raycast``) so that shape carries the class: a car is wheels + body + glass cabin, a pedestrian
two legs + torso + arms + head, a cyclist two thin wheels + frame + handlebar + rider, a van a tall body + hood, a
truck a cab + cargo box. Static clutter (buildings, poles and signs, trees, bollards, advertising columns, bushes,
cabinets) is unlabelled but occludes and resembles objects (poles and columns vs pedestrians, vans vs cars).
"""
from dataclasses import dataclass, field

import numpy as np

from . import raycast as rc

SENSOR_HEIGHT = 1.73
LABELLED_CLASSES = ("Car", "Pedestrian", "Cyclist", "Van", "Truck")
# labelled boxes are this much larger than the geometry on each side and on top (as KITTI boxes are loose),
# so that range noise does not push surface points out of the box
LABEL_MARGIN = 0.05

# name: (reflectance in [0, 1], extra dropout probability)
MATERIALS = {
    "asphalt": (0.12, 0.0), "concrete": (0.30, 0.0), "car_paint": (0.45, 0.0), "glass": (0.10, 0.45),
    "rubber": (0.05, 0.10), "clothing": (0.30, 0.0), "skin": (0.40, 0.0), "bike_metal": (0.55, 0.10),
    "building": (0.35, 0.0), "pole_metal": (0.50, 0.0), "bark": (0.25, 0.0), "foliage": (0.22, 0.25),
    "retroreflector": (0.95, 0.0),
}
MATERIAL_IDS = {name: i for i, name in enumerate(MATERIALS)}
REFLECTANCE = np.array([v[0] for v in MATERIALS.values()])
MATERIAL_DROPOUT = np.array([v[1] for v in MATERIALS.values()])


@dataclass(frozen=True)
class Preset:
    """Sensor model and scene statistics. ``class_means``: Poisson means of objects per frame (whole scan)."""
    name: str
    beam_stride: int            # keep every beam_stride-th HDL-64E laser
    azimuth_step_deg: float
    max_range: float
    noise_sigma: float          # range noise, metres, plus noise_per_m * range
    noise_per_m: float
    base_dropout: float
    detect_floor: float         # returns with signal refl * (0.3 + 0.7 cos) / (r / 20)^2 below this mostly drop
    class_means: dict
    clutter_scale: float
    far_fraction: float         # share of objects placed 45-85 m ahead
    ped_group_prob: float
    dontcare_range: float       # labelled-class objects farther than this are written as DontCare
    min_box_height_px: float    # ... or with a 2D box lower than this


PRESETS = {
    "default": Preset("default", 1, 0.16, 120.0, 0.015, 0.0002, 0.02, 0.012,
                      {"Car": 7.0, "Pedestrian": 4.0, "Cyclist": 2.0, "Van": 0.8, "Truck": 0.3},
                      1.0, 0.2, 0.3, 70.0, 10.0),
    "hard": Preset("hard", 2, 0.2, 120.0, 0.03, 0.0005, 0.06, 0.02,
                   {"Car": 9.0, "Pedestrian": 5.0, "Cyclist": 2.5, "Van": 1.5, "Truck": 0.6},
                   2.0, 0.4, 0.5, 70.0, 10.0),
}


def get_preset(name):
    """Preset by name ('default' or 'hard'); unknown names raise with the valid choices."""
    if name not in PRESETS:
        raise ValueError(f"scene.get_preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def hdl64e_elevations():
    """(64,) HDL-64E-like beam elevations in degrees, top to bottom: upper block 32 lasers +2.0..-8.33 (1/3 deg
    apart), lower block 32 lasers -8.83..-24.9 (~1/2 deg apart), with a fixed per-laser calibration jitter."""
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.9, 32)
    jitter = 0.02 * np.sin(np.arange(64) * 2.3)
    return np.concatenate([upper, lower]) + jitter


@dataclass
class SceneObject:
    """cls: class or clutter kind; box: (7,) LiDAR ``[x, y, z, l, w, h, heading]``, centre origin."""
    cls: str
    box: np.ndarray
    labelled: bool


@dataclass
class Scene:
    """ground: (GROUND_LEN,) raycast ground parameters; prims: (K, NUM_COLS); objects: index = object id."""
    ground: np.ndarray
    prims: np.ndarray
    objects: list = field(default_factory=list)
    road: dict = field(default_factory=dict)


def _b(x, y, z0, z1, hx, hy, mat):
    """Local box row: centre (x, y), vertical extent [z0, z1] above the object's bottom."""
    return (rc.PRIM_BOX, x, y, 0.5 * (z0 + z1), hx, hy, 0.5 * (z1 - z0), MATERIAL_IDS[mat])


def _cyl(x, y, z0, z1, r, mat):
    return (rc.PRIM_CYLINDER, x, y, 0.5 * (z0 + z1), r, r, 0.5 * (z1 - z0), MATERIAL_IDS[mat])


def _ell(x, y, zc, r, rz, mat):
    return (rc.PRIM_ELLIPSOID, x, y, zc, r, r, rz, MATERIAL_IDS[mat])


def car_parts(l, w, h, rng):
    """Primitive rows (object frame: origin at the bottom centre, x forward) of a car of geometry l x w x h:
    four wheels, a body up to the belt line and a narrower glass cabin with a roof (length/position random).
    The part builders below share this contract: rows ``(type, x, y, z_centre, hx, hy, hz, material)``."""
    clear = 0.17 * h
    belt = rng.uniform(0.48, 0.56) * h
    cab_len = rng.uniform(0.45, 0.6) * l
    cab_x = rng.uniform(-0.15, 0.0) * l
    rw = 0.2 * h
    parts = [_b(0.0, 0.0, clear, belt, 0.5 * l, 0.5 * w, "car_paint"),
             _b(cab_x, 0.0, belt, h - 0.05, 0.5 * cab_len, 0.43 * w, "glass"),
             _b(cab_x, 0.0, h - 0.05, h, 0.5 * cab_len - 0.1, 0.43 * w, "car_paint")]
    for sx in (-1.0, 1.0):
        for sy in (-1.0, 1.0):
            parts.append(_b(sx * 0.33 * l, sy * (0.5 * w - 0.12), 0.0, 2 * rw, rw, 0.1, "rubber"))
    return parts


def van_parts(l, w, h, rng):
    """Van: tall box body, low hood in front, windscreen, four wheels."""
    clear = 0.14 * h
    hood = rng.uniform(0.12, 0.2) * l
    rw = 0.15 * h
    body_len = l - hood
    parts = [_b(-0.5 * hood, 0.0, clear, h, 0.5 * body_len, 0.5 * w, "car_paint"),
             _b(0.5 * l - 0.5 * hood, 0.0, clear, 0.5 * h, 0.5 * hood, 0.48 * w, "car_paint"),
             _b(0.5 * l - hood - 0.05, 0.0, 0.55 * h, 0.9 * h, 0.06, 0.45 * w, "glass")]
    for sx in (-0.32, 0.33):
        for sy in (-1.0, 1.0):
            parts.append(_b(sx * l, sy * (0.5 * w - 0.12), 0.0, 2 * rw, rw, 0.11, "rubber"))
    return parts


def truck_parts(l, w, h, rng):
    """Truck: cab in front, separate cargo box behind, six wheels."""
    cab = rng.uniform(0.18, 0.25) * l
    rw = 0.5
    parts = [_b(0.5 * l - 0.5 * cab, 0.0, 0.35, 0.85 * h, 0.5 * cab, 0.5 * w, "car_paint"),
             _b(-0.5 * cab - 0.05, 0.0, 0.9, h, 0.5 * (l - cab) - 0.05, 0.5 * w, "building")]
    for sx in (-0.38, -0.2, 0.38):
        for sy in (-1.0, 1.0):
            parts.append(_b(sx * l, sy * (0.5 * w - 0.15), 0.0, 2 * rw, rw, 0.14, "rubber"))
    return parts


def pedestrian_parts(l, w, h, rng):
    """Pedestrian: two legs and two arms at a random walking phase, torso, ellipsoid head."""
    stride = 0.3 * l * rng.uniform(-1.0, 1.0)
    torso_hy = min(0.2, 0.5 * w - 0.06)
    hip = 0.47 * h
    shoulder = 0.83 * h
    parts = [_b(stride, 0.09, 0.0, hip, 0.07, 0.07, "clothing"),
             _b(-stride, -0.09, 0.0, hip, 0.07, 0.07, "clothing"),
             _b(0.0, 0.0, hip, shoulder, 0.12, torso_hy, "clothing"),
             _b(-0.6 * stride, torso_hy + 0.05, 0.5 * h, shoulder - 0.02, 0.05, 0.05, "clothing"),
             _b(0.6 * stride, -torso_hy - 0.05, 0.5 * h, shoulder - 0.02, 0.05, 0.05, "clothing"),
             _ell(0.0, 0.0, h - 0.11, 0.09, 0.11, "skin")]
    return parts


def cyclist_parts(l, w, h, rng):
    """Cyclist: two thin wheels, frame, handlebar; rider with legs, torso, arms to the bar and head."""
    s = h / 1.73
    rw = min(0.34, 0.19 * l)
    wx = 0.5 * l - rw
    bar_x = 0.8 * wx
    parts = [_b(wx, 0.0, 0.0, 2 * rw, rw, 0.03, "rubber"),
             _b(-wx, 0.0, 0.0, 2 * rw, rw, 0.03, "rubber"),
             _b(0.0, 0.0, rw, rw + 0.3, 0.9 * wx, 0.03, "bike_metal"),
             _b(bar_x, 0.0, 0.95 * s, 1.0 * s, 0.03, min(0.28, 0.5 * w), "bike_metal"),
             _b(-0.1, 0.11, 0.35 * s, 0.95 * s, 0.06, 0.07, "clothing"),
             _b(-0.1, -0.11, 0.35 * s, 0.95 * s, 0.06, 0.07, "clothing"),
             _b(0.0, 0.0, 0.95 * s, 1.47 * s, 0.17, 0.18, "clothing"),
             _b(0.5 * bar_x, 0.0, 1.1 * s, 1.2 * s, 0.5 * bar_x, min(0.24, 0.5 * w - 0.04), "clothing"),
             _ell(0.12, 0.0, h - 0.12, 0.1, 0.12, "skin")]
    return parts


SHAPES = {"Car": car_parts, "Van": van_parts, "Truck": truck_parts, "Pedestrian": pedestrian_parts,
          "Cyclist": cyclist_parts}
# (mean, std, min, max) of l, w, h in metres
SIZE_STATS = {
    "Car": ((3.9, 0.4, 3.2, 4.9), (1.6, 0.1, 1.4, 1.9), (1.55, 0.1, 1.35, 1.8)),
    "Van": ((5.1, 0.4, 4.3, 6.0), (1.95, 0.1, 1.75, 2.2), (2.2, 0.15, 1.9, 2.6)),
    "Truck": ((10.0, 2.0, 6.5, 14.0), (2.5, 0.1, 2.3, 2.7), (3.3, 0.3, 2.8, 3.9)),
    "Pedestrian": ((0.8, 0.1, 0.55, 1.05), (0.6, 0.07, 0.45, 0.75), (1.75, 0.1, 1.5, 1.98)),
    "Cyclist": ((1.76, 0.1, 1.5, 1.95), (0.6, 0.06, 0.5, 0.72), (1.73, 0.08, 1.55, 1.9)),
}


def sample_dims(cls, rng):
    """(l, w, h) metres of a labelled class from SIZE_STATS (clipped normal)."""
    return tuple(float(np.clip(rng.normal(m, s), lo, hi)) for m, s, lo, hi in SIZE_STATS[cls])


def ground_height(ground, x, y):
    """Ground z at LiDAR (x, y) (arrays broadcast): road plane, raised by the curb height off the road."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    v = -ground[rc.G_SIN] * x + ground[rc.G_COS] * y
    off_road = (v < ground[rc.G_VLO]) | (v > ground[rc.G_VHI])
    return ground[rc.G_Z0] + ground[rc.G_SX] * x + ground[rc.G_SY] * y + ground[rc.G_CURB] * off_road


def _footprint(x, y, l, w, heading):
    c, s = np.cos(heading), np.sin(heading)
    local = np.array([[0.5, 0.5], [0.5, -0.5], [-0.5, -0.5], [-0.5, 0.5]]) * [l, w]
    return local @ np.array([[c, s], [-s, c]]) + [x, y]


def _separated(a, b):
    for poly in (a, b):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa = a @ axis
            pb = b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return True
    return False


class _Placer:
    """Bird's-eye-view occupancy: rejects footprints that overlap (with a margin) anything placed before."""

    def __init__(self):
        self.centres = []
        self.radii = []
        self.polys = []

    def try_add(self, x, y, l, w, heading, margin):
        poly = _footprint(x, y, l + 2 * margin, w + 2 * margin, heading)
        radius = 0.5 * np.hypot(l, w) + margin
        if self.centres:
            d = np.hypot(*(np.array(self.centres) - [x, y]).T)
            close = np.nonzero(d < np.array(self.radii) + radius)[0]
            for i in close:
                if not _separated(poly, self.polys[i]):
                    return False
        self.centres.append((x, y))
        self.radii.append(radius)
        self.polys.append(poly)
        return True


class _Builder:
    """Accumulates objects and their primitives in the LiDAR frame."""

    def __init__(self, ground):
        self.ground = ground
        self.objects = []
        self.rows = []

    def add(self, cls, x, y, dims, heading, parts, labelled, z_bottom=None):
        l, w, h = dims
        zb = float(ground_height(self.ground, x, y)) if z_bottom is None else z_bottom
        obj_id = len(self.objects)
        self.objects.append(SceneObject(cls, np.array([x, y, zb + 0.5 * h, l, w, h, heading]), labelled))
        c, s = np.cos(heading), np.sin(heading)
        for typ, px, py, pz, hx, hy, hz, mat in parts:
            self.rows.append((typ, x + c * px - s * py, y + s * px + c * py, zb + pz, hx, hy, hz, c, s, mat, obj_id))
        return obj_id


def _road_geometry(rng):
    theta = rng.uniform(-0.1, 0.1)
    lane_w = 3.5
    n_lanes = int(rng.integers(2, 5))
    n_fwd = max(1, n_lanes // 2)
    park_r, park_l = (rng.uniform(0.0, 2.5) if rng.random() < 0.6 else 0.0 for _ in range(2))
    ego_lane = int(rng.integers(0, n_fwd))
    v_lo = -(park_r + (ego_lane + 0.5) * lane_w + rng.normal(0.0, 0.3))
    v_hi = v_lo + park_r + n_lanes * lane_w + park_l
    return dict(theta=theta, lane_w=lane_w, n_lanes=n_lanes, n_fwd=n_fwd, park_r=park_r, park_l=park_l,
                v_lo=v_lo, v_hi=v_hi, curb=rng.uniform(0.10, 0.18), sidewalk_r=rng.uniform(2.0, 5.0),
                sidewalk_l=rng.uniform(2.0, 5.0), sx=rng.uniform(-0.015, 0.015), sy=rng.uniform(-0.008, 0.008))


def _to_xy(road, u, v):
    c, s = np.cos(road["theta"]), np.sin(road["theta"])
    return c * u - s * v, s * u + c * v


def _sample_u(rng, preset):
    if rng.random() < preset.far_fraction:
        return rng.uniform(45.0, 85.0)
    if rng.random() < 0.75:
        return rng.uniform(3.0, 45.0)
    return rng.uniform(-40.0, -3.0)


def _sidewalk_v(road, rng, side, lo_off, hi_off):
    """Lateral position on the right (side -1) or left (side +1) sidewalk, offsets measured from the curb."""
    if side < 0:
        return road["v_lo"] - rng.uniform(lo_off, max(lo_off, road["sidewalk_r"] - hi_off))
    return road["v_hi"] + rng.uniform(lo_off, max(lo_off, road["sidewalk_l"] - hi_off))


def _add_buildings(builder, road, rng):
    mat = MATERIAL_IDS["building"]
    for side in (-1.0, 1.0):
        edge = road["v_lo"] - road["sidewalk_r"] if side < 0 else road["v_hi"] + road["sidewalk_l"]
        u = -70.0
        while u < 120.0:
            length = rng.uniform(6.0, 30.0)
            if rng.random() < 0.3:
                u += rng.uniform(3.0, 15.0)
            depth = rng.uniform(6.0, 15.0)
            v = edge + side * (rng.uniform(0.3, 6.0) + 0.5 * depth)
            x, y = _to_xy(road, u + 0.5 * length, v)
            height = rng.uniform(3.5, 15.0)
            zb = float(ground_height(builder.ground, x, y)) - 0.5
            parts = [(rc.PRIM_BOX, 0.0, 0.0, 0.5 * (height + 0.5), 0.5 * length, 0.5 * depth,
                      0.5 * (height + 0.5), mat)]
            builder.add("Building", x, y, (length, depth, height + 0.5), road["theta"], parts, False, zb)
            u += length


def _add_clutter(builder, placer, road, rng, preset):
    scale = preset.clutter_scale

    def spot(lo_off, hi_off):
        side = -1 if rng.random() < 0.5 else 1
        u = rng.uniform(-45.0, 90.0)
        return _to_xy(road, u, _sidewalk_v(road, rng, side, lo_off, hi_off))

    for _ in range(rng.poisson(7 * scale)):  # street lights, sign posts
        x, y = spot(0.3, 0.5)
        r = rng.uniform(0.06, 0.15)
        height = rng.uniform(2.5, 8.0)
        if not placer.try_add(x, y, 2 * r, 2 * r, 0.0, 0.2):
            continue
        parts = [_cyl(0.0, 0.0, 0.0, height, r, "pole_metal")]
        if rng.random() < 0.4:
            parts.append(_b(0.0, 0.0, height - 0.7, height, 0.03, rng.uniform(0.25, 0.45), "retroreflector"))
        builder.add("Pole", x, y, (2 * r, 2 * r, height), road["theta"] + rng.uniform(-1, 1), parts, False)
    for _ in range(rng.poisson(6 * scale)):
        x, y = spot(0.8, 0.5)
        r = rng.uniform(0.12, 0.3)
        trunk = rng.uniform(1.8, 3.5)
        crown_r = rng.uniform(1.0, 2.8)
        crown_rz = rng.uniform(1.0, 2.5)
        if not placer.try_add(x, y, 2 * r, 2 * r, 0.0, 0.3):
            continue
        parts = [_cyl(0.0, 0.0, 0.0, trunk + 0.3, r, "bark"), _ell(0.0, 0.0, trunk + 0.8 * crown_rz, crown_r,
                                                                   crown_rz, "foliage")]
        builder.add("Tree", x, y, (2 * crown_r, 2 * crown_r, trunk + 1.8 * crown_rz), 0.0, parts, False)
    for _ in range(rng.poisson(4 * scale)):  # bollards, hydrants, advertising columns: pedestrian-sized
        x, y = spot(0.3, 0.3)
        r = rng.uniform(0.08, 0.4)
        height = rng.uniform(0.6, 2.2)
        if not placer.try_add(x, y, 2 * r, 2 * r, 0.0, 0.2):
            continue
        builder.add("Column", x, y, (2 * r, 2 * r, height), 0.0,
                    [_cyl(0.0, 0.0, 0.0, height, r, "concrete" if r > 0.2 else "pole_metal")], False)
    for _ in range(rng.poisson(2.5 * scale)):  # bushes, cabinets, dumpsters: car-part-sized boxes
        x, y = spot(0.5, 0.5)
        l, w, h = rng.uniform(0.8, 3.0), rng.uniform(0.6, 1.5), rng.uniform(0.6, 1.6)
        heading = road["theta"] + rng.normal(0.0, 0.2)
        if not placer.try_add(x, y, l, w, heading, 0.2):
            continue
        mat = "foliage" if rng.random() < 0.5 else "car_paint"
        builder.add("Box", x, y, (l, w, h), heading, [_b(0.0, 0.0, 0.0, h, 0.5 * l, 0.5 * w, mat)], False)


def _lane_pose(road, rng, cls, w):
    """Lateral road coordinate v and heading of a road user: driving in a lane, parked at the kerb, or (cars
    only) at a random heading anywhere on the road."""
    theta = road["theta"]
    mode = rng.random()
    parked_share = {"Car": 0.35, "Van": 0.6, "Truck": 0.4, "Cyclist": 0.0}[cls]
    if cls == "Car" and mode > 0.88:
        return rng.uniform(road["v_lo"] + 1.0, road["v_hi"] - 1.0), rng.uniform(-np.pi, np.pi)
    if mode < parked_share:
        if rng.random() < 0.5:
            return road["v_lo"] + 0.5 * w + rng.uniform(0.1, 0.4), theta + rng.normal(0.0, 0.03)
        return road["v_hi"] - 0.5 * w - rng.uniform(0.1, 0.4), theta + np.pi + rng.normal(0.0, 0.03)
    lane = int(rng.integers(0, road["n_lanes"]))
    base = road["v_lo"] + road["park_r"] + lane * road["lane_w"]
    forward = lane < road["n_fwd"]
    if cls == "Cyclist":
        v = base + (rng.uniform(0.5, 1.2) if forward else road["lane_w"] - rng.uniform(0.5, 1.2))
        return v, theta + (0.0 if forward else np.pi) + rng.normal(0.0, 0.1)
    v = base + 0.5 * road["lane_w"] + rng.normal(0.0, 0.25)
    return v, theta + (0.0 if forward else np.pi) + rng.normal(0.0, 0.04)


def _add_road_users(builder, placer, road, rng, preset):
    order = []
    for cls in ("Truck", "Van", "Car", "Cyclist", "Pedestrian"):
        order += [cls] * int(rng.poisson(preset.class_means[cls]))
    group_anchor = None
    for cls in order:
        dims = sample_dims(cls, rng)
        for _ in range(6):
            if cls == "Pedestrian" and group_anchor is not None and rng.random() < preset.ped_group_prob:
                ax, ay, ah = group_anchor
                x, y = ax + rng.uniform(-1.5, 1.5), ay + rng.uniform(-1.5, 1.5)
                heading = ah + rng.normal(0.0, 0.4)
            elif cls == "Pedestrian":
                u = _sample_u(rng, preset)
                if rng.random() < 0.7:
                    v = _sidewalk_v(road, rng, -1 if rng.random() < 0.5 else 1, 0.4, 0.4)
                    heading = road["theta"] + (0.0 if rng.random() < 0.5 else np.pi) + rng.normal(0.0, 0.3)
                    if rng.random() < 0.3:
                        heading = rng.uniform(-np.pi, np.pi)
                else:
                    v = rng.uniform(road["v_lo"] + 0.5, road["v_hi"] - 0.5)
                    heading = road["theta"] + (0.5 if rng.random() < 0.5 else -0.5) * np.pi + rng.normal(0, 0.3)
                x, y = _to_xy(road, u, v)
            elif cls == "Cyclist" and rng.random() < 0.2:
                x, y = _to_xy(road, _sample_u(rng, preset), _sidewalk_v(road, rng, 1 if rng.random() < 0.5
                                                                          else -1, 0.6, 0.6))
                heading = rng.uniform(-np.pi, np.pi)
            else:
                v, heading = _lane_pose(road, rng, cls, dims[1])
                x, y = _to_xy(road, _sample_u(rng, preset), v)
            heading = float(np.arctan2(np.sin(heading), np.cos(heading)))
            if placer.try_add(x, y, dims[0], dims[1], heading, 0.15):
                shape_dims = (dims[0] - 2 * LABEL_MARGIN, dims[1] - 2 * LABEL_MARGIN, dims[2] - LABEL_MARGIN)
                builder.add(cls, x, y, dims, heading, SHAPES[cls](*shape_dims, rng), True)
                if cls == "Pedestrian":
                    group_anchor = (x, y, heading)
                break


def sample_scene(rng, preset):
    """Sample one scene.

    Args:
        rng: numpy Generator (the frame's own stream; the scene is a pure function of it).
        preset: Preset.
    Returns:
        Scene with ground (GROUND_LEN,), prims (K, NUM_COLS) and objects (K_obj SceneObject, index = object id).
    """
    road = _road_geometry(rng)
    ground = np.zeros(rc.GROUND_LEN)
    ground[rc.G_Z0] = -SENSOR_HEIGHT
    ground[rc.G_SX] = road["sx"]
    ground[rc.G_SY] = road["sy"]
    ground[rc.G_COS] = np.cos(road["theta"])
    ground[rc.G_SIN] = np.sin(road["theta"])
    ground[rc.G_VLO] = road["v_lo"]
    ground[rc.G_VHI] = road["v_hi"]
    ground[rc.G_CURB] = road["curb"]
    ground[rc.G_MAT_ROAD] = MATERIAL_IDS["asphalt"]
    ground[rc.G_MAT_SIDEWALK] = MATERIAL_IDS["concrete"]
    builder = _Builder(ground)
    placer = _Placer()
    placer.try_add(0.0, 0.0, 4.6, 2.0, 0.0, 0.5)  # the ego vehicle carrying the sensor
    _add_buildings(builder, road, rng)
    _add_clutter(builder, placer, road, rng, preset)
    _add_road_users(builder, placer, road, rng, preset)
    prims = np.array(builder.rows, np.float64).reshape(-1, rc.NUM_COLS)
    return Scene(ground=ground, prims=prims, objects=builder.objects, road=road)
