"""Numba ray casting of a spinning LiDAR against an analytic ground and a table of primitives.

Primitive table: float64 ``(K, NUM_COLS)``, one row per primitive, columns named by the ``C_*`` constants:
type (``PRIM_BOX`` yaw-rotated box, ``PRIM_CYLINDER`` vertical cylinder, ``PRIM_ELLIPSOID`` ellipsoid with equal
horizontal radii), centre (x, y, z) in the LiDAR frame, half sizes (hx, hy, hz; cylinder and ellipsoid: hx is the
horizontal radius, hz the vertical half size / radius), cos and sin of the yaw, material id, object id (>= 0).

Ground parameters: float64 ``(GROUND_LEN,)`` named by the ``G_*`` constants; the ground is the plane
``z = g0 + sx * x + sy * y`` on the road (lateral road coordinate ``v = -sin(theta) x + cos(theta) y`` within
``[v_lo, v_hi]``) and that plane raised by the curb height elsewhere (sidewalks), with vertical curb faces between.

Every ray starts at the sensor origin. Culling: primitives are binned by azimuth interval (CSR arrays) and carry an
elevation interval, so a ray only tests the primitives of its azimuth bin whose elevation interval contains it;
within a bin primitives are sorted by a lower bound of their horizontal distance, and the search stops at the
ground hit (or max range). It does not stop at the first object hit, because the occlusion counts need every
object the ray would reach with only the ground present.
"""
import math

import numba as nb
import numpy as np

PRIM_BOX, PRIM_CYLINDER, PRIM_ELLIPSOID = 0, 1, 2
C_TYPE, C_CX, C_CY, C_CZ, C_HX, C_HY, C_HZ, C_COS, C_SIN, C_MAT, C_OBJ = range(11)
NUM_COLS = 11

G_Z0, G_SX, G_SY, G_COS, G_SIN, G_VLO, G_VHI, G_CURB, G_MAT_ROAD, G_MAT_SIDEWALK = range(10)
GROUND_LEN = 10

HIT_GROUND = -1
HIT_NONE = -2


@nb.njit(cache=True)
def _ray_box(dx, dy, dz, p):
    """Entry distance and |cos incidence| of a ray from the origin with a yaw-rotated box (inf when missed)."""
    c = p[C_COS]
    s = p[C_SIN]
    ox = -(c * p[C_CX] + s * p[C_CY])
    oy = s * p[C_CX] - c * p[C_CY]
    oz = -p[C_CZ]
    ld0 = c * dx + s * dy
    ld1 = -s * dx + c * dy
    o3 = (ox, oy, oz)
    d3 = (ld0, ld1, dz)
    h3 = (p[C_HX], p[C_HY], p[C_HZ])
    tnear = -np.inf
    tfar = np.inf
    cos_near = 0.0
    for a in range(3):
        o = o3[a]
        d = d3[a]
        h = h3[a]
        if abs(d) < 1e-12:
            if abs(o) > h:
                return np.inf, 0.0
            continue
        t1 = (-h - o) / d
        t2 = (h - o) / d
        if t1 > t2:
            t1, t2 = t2, t1
        if t1 > tnear:
            tnear = t1
            cos_near = abs(d)
        if t2 < tfar:
            tfar = t2
    if tnear > tfar or tnear <= 0.0:
        return np.inf, 0.0
    return tnear, cos_near


@nb.njit(cache=True)
def _ray_cylinder(dx, dy, dz, p):
    """Entry distance and |cos incidence| of a ray from the origin with a capped vertical cylinder."""
    cx = p[C_CX]
    cy = p[C_CY]
    cz = p[C_CZ]
    r = p[C_HX]
    hz = p[C_HZ]
    best = np.inf
    best_cos = 0.0
    a = dx * dx + dy * dy
    if a > 1e-12:
        b = -2.0 * (cx * dx + cy * dy)
        cc = cx * cx + cy * cy - r * r
        disc = b * b - 4.0 * a * cc
        if disc >= 0.0 and cc > 0.0:
            t = (-b - math.sqrt(disc)) / (2.0 * a)
            if t > 0.0:
                z = t * dz
                if cz - hz <= z <= cz + hz:
                    px = t * dx - cx
                    py = t * dy - cy
                    best = t
                    best_cos = abs(px * dx + py * dy) / r
    if abs(dz) > 1e-12:
        for zc in (cz + hz, cz - hz):
            t = zc / dz
            if 0.0 < t < best:
                px = t * dx - cx
                py = t * dy - cy
                if px * px + py * py <= r * r:
                    best = t
                    best_cos = abs(dz)
    return best, best_cos


@nb.njit(cache=True)
def _ray_ellipsoid(dx, dy, dz, p):
    """Entry distance and |cos incidence| of a ray from the origin with an ellipsoid (radii r, r, rz)."""
    r = p[C_HX]
    rz = p[C_HZ]
    k = r / rz
    qx = -p[C_CX]
    qy = -p[C_CY]
    qz = -p[C_CZ] * k
    ez = dz * k
    a = dx * dx + dy * dy + ez * ez
    b = 2.0 * (qx * dx + qy * dy + qz * ez)
    cc = qx * qx + qy * qy + qz * qz - r * r
    disc = b * b - 4.0 * a * cc
    if disc < 0.0 or cc <= 0.0:
        return np.inf, 0.0
    t = (-b - math.sqrt(disc)) / (2.0 * a)
    if t <= 0.0:
        return np.inf, 0.0
    nx = (t * dx - p[C_CX]) / (r * r)
    ny = (t * dy - p[C_CY]) / (r * r)
    nz = (t * dz - p[C_CZ]) / (rz * rz)
    nn = math.sqrt(nx * nx + ny * ny + nz * nz)
    return t, abs(nx * dx + ny * dy + nz * dz) / nn


@nb.njit(cache=True)
def _ray_prim(dx, dy, dz, p):
    typ = int(p[C_TYPE])
    if typ == PRIM_BOX:
        return _ray_box(dx, dy, dz, p)
    if typ == PRIM_CYLINDER:
        return _ray_cylinder(dx, dy, dz, p)
    return _ray_ellipsoid(dx, dy, dz, p)


@nb.njit(cache=True)
def _ray_ground(dx, dy, dz, g):
    """Distance, |cos incidence| and material of the first ground hit (road plane, sidewalk plane, curb face)."""
    z0 = g[G_Z0]
    sx = g[G_SX]
    sy = g[G_SY]
    vlo = g[G_VLO]
    vhi = g[G_VHI]
    curb = g[G_CURB]
    dv = -g[G_SIN] * dx + g[G_COS] * dy
    best = np.inf
    best_cos = 0.0
    best_mat = g[G_MAT_ROAD]
    den = dz - sx * dx - sy * dy
    nrm = math.sqrt(sx * sx + sy * sy + 1.0)
    if den < -1e-12:
        t = z0 / den
        if t > 0.0:
            v = t * dv
            if vlo <= v <= vhi:
                best = t
                best_cos = -den / nrm
        t = (z0 + curb) / den
        if 0.0 < t < best:
            v = t * dv
            if v < vlo or v > vhi:
                best = t
                best_cos = -den / nrm
                best_mat = g[G_MAT_SIDEWALK]
    if abs(dv) > 1e-12:
        for vc in (vlo, vhi):
            t = vc / dv
            if 0.0 < t < best:
                zg = z0 + sx * t * dx + sy * t * dy
                z = t * dz
                if zg <= z <= zg + curb:
                    best = t
                    best_cos = abs(dv)
                    best_mat = g[G_MAT_SIDEWALK]
    return best, best_cos, best_mat


@nb.njit(cache=True)
def build_culling(prims, num_bins):
    """Azimuth bins (CSR) and elevation intervals of the primitives.

    Args:
        prims: (K, NUM_COLS) float64 primitive table.
        num_bins: number of equal azimuth bins over [-pi, pi).
    Returns:
        bin_start (num_bins + 1,) int64, bin_items (M,) int64 primitive indices (sorted by near distance within
        each bin), el_lo (K,), el_hi (K,) radians, near (K,) lower bound of the horizontal distance of each
        primitive from the sensor.
    """
    k_count = prims.shape[0]
    az_c = np.empty(k_count)
    az_h = np.empty(k_count)
    el_lo = np.empty(k_count)
    el_hi = np.empty(k_count)
    near = np.empty(k_count)
    for k in range(k_count):
        p = prims[k]
        if int(p[C_TYPE]) == PRIM_BOX:
            rh = math.sqrt(p[C_HX] * p[C_HX] + p[C_HY] * p[C_HY])
        else:
            rh = p[C_HX]
        dh = math.sqrt(p[C_CX] * p[C_CX] + p[C_CY] * p[C_CY])
        z0 = p[C_CZ] - p[C_HZ]
        z1 = p[C_CZ] + p[C_HZ]
        az_c[k] = math.atan2(p[C_CY], p[C_CX])
        near[k] = max(dh - rh, 0.0)
        if dh <= rh + 1e-6:
            az_h[k] = np.pi
            el_lo[k] = -0.5 * np.pi
            el_hi[k] = 0.5 * np.pi
        else:
            az_h[k] = math.asin(rh / dh) + 1e-6
            dmin = dh - rh
            dmax = dh + rh
            el_lo[k] = min(math.atan2(z0, dmin), math.atan2(z0, dmax)) - 1e-6
            el_hi[k] = max(math.atan2(z1, dmin), math.atan2(z1, dmax)) + 1e-6
    width = 2.0 * np.pi / num_bins
    first = np.zeros(k_count, np.int64)
    span = np.zeros(k_count, np.int64)
    for k in range(k_count):
        if az_h[k] >= np.pi:
            span[k] = num_bins
        else:
            first[k] = int(math.floor((az_c[k] - az_h[k] + np.pi) / width))
            last = int(math.floor((az_c[k] + az_h[k] + np.pi) / width))
            span[k] = min(last - first[k] + 1, num_bins)
    counts = np.zeros(num_bins + 1, np.int64)
    for k in range(k_count):
        for i in range(span[k]):
            counts[(first[k] + i) % num_bins + 1] += 1
    for b in range(num_bins):
        counts[b + 1] += counts[b]
    items = np.empty(counts[num_bins], np.int64)
    fill = counts[:num_bins].copy()
    for k in np.argsort(near, kind="mergesort"):
        for i in range(span[k]):
            b = (first[k] + i) % num_bins
            items[fill[b]] = k
            fill[b] += 1
    return counts, items, el_lo, el_hi, near


@nb.njit(cache=True)
def cast_scan(elev, azim, prims, ground, max_range, num_objects, num_bins):
    """Cast every (elevation, azimuth) ray of one sweep.

    Args:
        elev: (B,) beam elevation angles, radians.
        azim: (A,) azimuth angles in [-pi, pi), radians.
        prims: (K, NUM_COLS) float64 primitive table (object ids < num_objects).
        ground: (GROUND_LEN,) float64 ground parameters.
        max_range: rays with no hit closer than this return HIT_NONE.
        num_objects: number of object ids.
        num_bins: azimuth culling bins.
    Returns:
        dist (B*A,) float64 (inf for no return), hit_id (B*A,) int64 (object id, HIT_GROUND or HIT_NONE),
        material (B*A,) int64 (-1 for no return), cos_inc (B*A,) float64, rays_alone (num_objects,) int64: rays
        that would hit the object with only the ground present, rays_hit (num_objects,) int64: rays whose first
        hit is the object. Ray index = beam * A + azimuth index.
    """
    n_beam = elev.shape[0]
    n_az = azim.shape[0]
    n = n_beam * n_az
    dist = np.full(n, np.inf)
    hit_id = np.full(n, HIT_NONE, np.int64)
    material = np.full(n, -1, np.int64)
    cos_inc = np.zeros(n)
    rays_alone = np.zeros(num_objects, np.int64)
    rays_hit = np.zeros(num_objects, np.int64)
    stamp = np.full(num_objects, -1, np.int64)
    bin_start, bin_items, el_lo, el_hi, near = build_culling(prims, num_bins)
    width = 2.0 * np.pi / num_bins
    caz = np.cos(azim)
    saz = np.sin(azim)
    abin = np.empty(n_az, np.int64)
    for j in range(n_az):
        abin[j] = min(max(int(math.floor((azim[j] + np.pi) / width)), 0), num_bins - 1)
    for i in range(n_beam):
        ce = math.cos(elev[i])
        dz = math.sin(elev[i])
        e = elev[i]
        for j in range(n_az):
            r = i * n_az + j
            dx = ce * caz[j]
            dy = ce * saz[j]
            tg, cg, mg = _ray_ground(dx, dy, dz, ground)
            limit = min(tg, max_range)
            best = limit
            best_cos = cg
            best_id = HIT_GROUND if tg <= max_range else HIT_NONE
            best_mat = int(mg) if tg <= max_range else -1
            b = abin[j]
            for q in range(bin_start[b], bin_start[b + 1]):
                k = bin_items[q]
                if near[k] > limit * ce:
                    break
                if e < el_lo[k] or e > el_hi[k]:
                    continue
                p = prims[k]
                t, c = _ray_prim(dx, dy, dz, p)
                if t < limit:
                    obj = int(p[C_OBJ])
                    if stamp[obj] != r:
                        stamp[obj] = r
                        rays_alone[obj] += 1
                    if t < best:
                        best = t
                        best_cos = c
                        best_id = obj
                        best_mat = int(p[C_MAT])
            if best_id != HIT_NONE:
                dist[r] = best
                hit_id[r] = best_id
                material[r] = best_mat
                cos_inc[r] = best_cos
                if best_id >= 0:
                    rays_hit[best_id] += 1
    return dist, hit_id, material, cos_inc, rays_alone, rays_hit


@nb.njit(cache=True)
def apply_sensor_model(dist, hit_id, material, cos_inc, elev, azim, reflectance, material_dropout, u_drop,
                       noise, i_noise, base_dropout, detect_floor, noise_sigma, noise_per_m):
    """Dropout, range noise and intensity for the returns of one sweep (formulas in lidar.simulate_sweep).

    Args:
        dist, hit_id, material, cos_inc: (B*A,) cast_scan outputs; elev (B,), azim (A,) radians.
        reflectance, material_dropout: (M,) per material.
        u_drop, noise, i_noise: (R,) uniform, normal, normal draws, one per return (rays with hit != HIT_NONE,
            in ray order).
        base_dropout, detect_floor, noise_sigma, noise_per_m: sensor parameters.
    Returns:
        points (N, 4) float32, hit ids (N,) int64, beam indices (N,) int64 of the kept returns.
    """
    n_az = azim.shape[0]
    n = dist.shape[0]
    points = np.empty((u_drop.shape[0], 4), np.float32)
    ids = np.empty(u_drop.shape[0], np.int64)
    beams = np.empty(u_drop.shape[0], np.int64)
    k = 0
    q = 0
    for r in range(n):
        if hit_id[r] == HIT_NONE:
            continue
        rr = dist[r]
        m = material[r]
        c = cos_inc[r]
        refl = reflectance[m]
        signal = refl * (0.3 + 0.7 * c) / ((rr / 20.0) * (rr / 20.0))
        p_detect = 1.0 / (1.0 + math.exp(-math.log(signal / detect_floor) / 0.5))
        p_keep = (1.0 - base_dropout) * (1.0 - material_dropout[m]) * p_detect
        if u_drop[q] < p_keep:
            rn = rr + noise[q] * (noise_sigma + noise_per_m * rr)
            b = r // n_az
            a = azim[r % n_az]
            ce = math.cos(elev[b])
            inten = refl * (0.35 + 0.65 * c) * (1.0 - 0.4 * min(rr / 80.0, 1.0)) + 0.03 * i_noise[q]
            inten = min(max(inten, 0.0), 1.0)
            points[k, 0] = rn * ce * math.cos(a)
            points[k, 1] = rn * ce * math.sin(a)
            points[k, 2] = rn * math.sin(elev[b])
            points[k, 3] = math.floor(inten * 100.0 + 0.5) / 100.0
            ids[k] = hit_id[r]
            beams[k] = b
            k += 1
        q += 1
    return points[:k], ids[:k], beams[:k]


@nb.njit(cache=True)
def count_points_in_boxes(points, boxes):
    """Points inside each box.

    Args:
        points: (N, >=3) float array, LiDAR frame.
        boxes: (M, 7) float64 ``[x, y, z, dx, dy, dz, heading]`` LiDAR boxes, centre origin.
    Returns:
        (M,) int64 counts.
    """
    m = boxes.shape[0]
    counts = np.zeros(m, np.int64)
    for b in range(m):
        cx, cy, cz, lx, ly, lz, hd = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3], boxes[b, 4], \
            boxes[b, 5], boxes[b, 6]
        c = math.cos(hd)
        s = math.sin(hd)
        rad2 = 0.25 * (lx * lx + ly * ly)
        for i in range(points.shape[0]):
            px = points[i, 0] - cx
            py = points[i, 1] - cy
            if px * px + py * py > rad2:
                continue
            pz = points[i, 2] - cz
            u = c * px + s * py
            w = -s * px + c * py
            if abs(u) <= 0.5 * lx and abs(w) <= 0.5 * ly and abs(pz) <= 0.5 * lz:
                counts[b] += 1
    return counts
