"""The phantom's anatomy: body wall, diaphragm, viscera, spine, thorax and ribs, painted onto a :class:`Scene`.

Every ``paint_*`` function draws its random parameters from ``rng`` in a fixed order, so a seed gives the same
phantom; ``hu_j(mean, sd)`` draws a jittered tissue HU value.
"""

from __future__ import annotations

import numpy as np

from medgmae.data.phantom.scene import displacement, ellipsoid, embed, random_field, smooth_path, tube

__all__ = ["paint_body", "paint_viscera", "paint_spine_and_muscles", "paint_thorax", "paint_ribs"]


def paint_body(scene, rng, A, B, skin, fat, muscle, hu_j):
    """Body outline with skin, subcutaneous fat and muscle wall; marks the abdominal cavity and thorax."""
    U = rng.uniform
    x, y, z = scene.x[:, None, None], scene.y[None, :, None], scene.z[None, None, :]
    zt = np.clip((z - 120.0) / 80.0, -2, 2)
    ph = U(0, 2 * np.pi)
    a = A * (1 + 0.05 * np.tanh(zt) + 0.02 * np.sin(0.02 * z + ph))
    b = B * (1 + 0.03 * np.tanh(-zt) + 0.02 * np.cos(0.017 * z + ph))
    p_ant, p_post = U(2.0, 2.4), U(2.6, 3.2)
    pexp = np.where(y >= 0, np.float32(p_ant), np.float32(p_post))
    rho = ((np.abs(x) / a) ** pexp + (np.abs(y) / b) ** pexp) ** (1 / pexp)  # (X, Y, Z)
    theta = np.arctan2(y, x)
    wobble = 1.0
    for k in (2, 3, 4):
        wobble = wobble + U(-0.015, 0.015) * np.cos(k * theta + U(0, 2 * np.pi))
    rho = (rho / wobble).astype(np.float32)
    r = np.sqrt(x * x + y * y)
    depth = r * (1 / np.maximum(rho, 1e-3) - 1)  # radial distance to the skin surface, mm
    del r
    sin_t = np.sin(theta)
    fat_t = fat * (1 + 0.45 * sin_t) * (1 + 0.25 * np.exp(-((z - 60.0) / 60.0) ** 2))  # thicker in front and low
    fat_t = np.where(sin_t < -0.3, fat * 0.55, fat_t)
    mus_t = muscle * (1 + 0.3 * np.abs(np.cos(theta)))
    inside = rho < 1
    hu = scene.hu
    hu[inside] = hu_j(30, 8)
    scene.tissue[inside] = 1
    in_fat = inside & (depth > skin)
    hu[in_fat] = hu_j(-102, 6)
    scene.tissue[in_fat] = 2
    in_mus = in_fat & (depth > skin + fat_t)
    hu[in_mus] = hu_j(50, 4)
    scene.tissue[in_mus] = 3
    interior = in_mus & (depth > skin + fat_t + mus_t)
    del depth, fat_t, mus_t, in_fat, in_mus
    # diaphragm: two domes in the organ frame, right higher than left
    scene.dome = _dome(scene, rng)
    dome = scene.dome
    below = scene.z[None, None, :] < dome - 4.0
    scene.interior = interior
    scene.cavity = interior & below
    scene.thorax = interior & (scene.z[None, None, :] > dome)
    diaphragm = interior & ~scene.cavity & ~scene.thorax
    hu[diaphragm] = hu_j(48, 4)
    scene.tissue[diaphragm] = 3
    # visceral (intra-abdominal) fat with a soft-tissue texture (mesentery, vessels)
    tex = random_field(rng, 22.0, 35.0, terms=4)(x, y, z)
    vf = hu_j(-92, 5) + np.broadcast_to(tex, scene.shape)
    hu[scene.cavity] = vf[scene.cavity]
    scene.tissue[scene.cavity] = 2
    scene.body = inside


def _dome(scene, rng):
    """Height (reference mm) of the two-domed diaphragm over the (x, y) organ-frame grid."""
    U = rng.uniform
    ox, oy = scene.ox[:, None, None], scene.oy[None, :, None]
    top_r, top_l = U(205, 222), U(195, 212)
    k = U(0.006, 0.009)
    zr = top_r - k * ((ox - 55.0) ** 2 + 0.8 * (oy + 5.0) ** 2)
    zl = top_l - k * ((ox + 55.0) ** 2 + 0.8 * (oy + 5.0) ** 2)
    return np.maximum(np.maximum(zr, zl), U(178, 188) - 0.004 * ox**2).astype(np.float32)


def _organ(scene, rng, centre, radii, rot, jitter_pos, jitter_size, jitter_rot, exponent=2.0, deform=0.12):
    """A randomly placed, sized, rotated and deformed ellipsoid field."""
    U = rng.uniform
    centre = np.asarray(centre, float) + rng.normal(0.0, jitter_pos, 3)
    radii = np.asarray(radii, float) * U(1 - jitter_size, 1 + jitter_size) * U(0.93, 1.07, 3)
    rot = np.asarray(rot, float) + rng.normal(0.0, jitter_rot, 3)
    amp = deform * radii.mean()
    disp = displacement(rng, amp, wavelength=radii.mean() * U(2.0, 3.5))
    return ellipsoid(scene, centre, radii, rot, exponent, disp, amp), centre, radii


def paint_viscera(scene, rng, hu_j):
    """Abdominal organs, in painting order (later shapes win): gut, solid organs, vessels."""
    _paint_gut(scene, rng, hu_j)
    _paint_solid_organs(scene, rng, hu_j)
    _paint_vessels(scene, rng, hu_j)


def _paint_gut(scene, rng, hu_j):
    """Colon frame, small-bowel loops and the stomach."""
    U = rng.uniform
    cav = scene.cavity

    # bowel: colon frame and small-bowel loops (painted first: solid organs displace them)
    colon_ctrl = np.array([
        [95, 5, -60], [98, 0, 20], [95, 10, 95], [70, 40, 112], [20, 55, 100], [-30, 52, 108], [-80, 30, 135],
        [-98, 0, 115], [-100, -10, 40], [-95, -5, -60],
    ], float) + rng.normal(0, 5, (10, 3))
    path = smooth_path(colon_ctrl, step=5.0)
    s = np.cumsum(np.r_[0, np.linalg.norm(np.diff(path, axis=0), axis=1)])
    rad = U(15, 20) * (1 + 0.12 * np.sin(2 * np.pi * s / U(22, 30)))
    _bowel(scene, rng, path, rad, wall=2.5, gas_frac=U(0.3, 0.6), content=(-40, 35), hu_j=hu_j)
    start = np.array([U(-40, 40), U(20, 50), U(60, 90)])
    pts, d = [start], rng.normal(size=3)
    lo, hi = np.array([-70, 0, -40]), np.array([70, 70, 95])
    for _ in range(int(U(28, 40))):
        d = d / np.linalg.norm(d) + rng.normal(0, 0.9, 3)
        d /= np.linalg.norm(d)
        nxt = pts[-1] + 15.0 * d
        d = np.where((nxt < lo) | (nxt > hi), -d, d)
        pts.append(np.clip(nxt, lo, hi))
    path = smooth_path(np.array(pts), step=5.0)
    _bowel(scene, rng, path, np.full(len(path), U(9, 12)), wall=2.0, gas_frac=U(0.1, 0.3), content=(15, 10), hu_j=hu_j)

    # stomach: J-shaped tube, fundus under the left dome, antrum crossing to the right; gas on top (anterior)
    ctrl = np.array([[-55, -5, 190], [-62, 12, 165], [-45, 35, 138], [-10, 45, 128], [18, 38, 128]], float)
    ctrl += rng.normal(0, 4, ctrl.shape)
    path = smooth_path(ctrl, step=4.0)
    fillf = U(0.8, 1.15)
    rad = np.interp(np.linspace(0, 1, len(path)), [0, 0.3, 0.7, 1], np.array([34, 30, 20, 10]) * fillf)
    sl, sdf = tube(scene, path, rad)
    if sl is not None:
        inside = (sdf < 0) & cav[sl]
        if inside.any():
            scene.paint(sl, inside, hu_j(42, 4), 7, tissue=4)
            lumen = inside & (sdf < -3.5)
            scene.paint(sl, lumen, hu_j(18, 8), 7, tissue=7)
            y = scene.grids(sl)[1]
            ytop = np.broadcast_to(y, lumen.shape)[lumen].max() if lumen.any() else 0.0
            gas = lumen & (y > ytop - U(4, 22))
            scene.paint(sl, gas, -1000.0, 7, tissue=8)


def _paint_solid_organs(scene, rng, hu_j):
    """Liver, gallbladder, spleen, pancreas, kidneys and adrenal glands."""
    U = rng.uniform
    cav = scene.cavity

    # liver: right lobe + left lobe, deformed together, under the right dome
    disp_amp = U(6, 10)
    disp = displacement(rng, disp_amp, U(120, 180))
    cr = np.array([68, 2, 170]) + rng.normal(0, 5, 3)
    rr = np.array([72, 78, 68]) * U(0.9, 1.08)
    cl = np.array([-15, 38, 178]) + rng.normal(0, 5, 3)
    rl = np.array([55, 36, 34]) * U(0.85, 1.15)
    sl1, f1 = ellipsoid(scene, cr, rr, (0, U(-10, 10), U(-15, 5)), 2.0, disp, disp_amp)
    if sl1 is not None:
        big = scene.box(np.minimum(cr - rr.max(), cl - rl.max()) - disp_amp, np.maximum(cr + rr.max(), cl + rl.max()) + disp_amp)
        fr = embed(scene, big, sl1, f1)
        sl2, f2 = ellipsoid(scene, cl, rl, (0, 0, U(-20, 0)), 2.0, disp, disp_amp)
        if sl2 is not None:
            fr = np.minimum(fr, embed(scene, big, sl2, f2))
        liver = (fr < 1) & cav[big]
        scene.paint(big, liver, hu_j(57, 4), 6)

    # gallbladder: pear under the liver's inferior surface
    (sl, f), c, _ = _organ(scene, rng, [45, 35, 118], [14, 14, 32], [20, -25, 0], 4, 0.15, 8, deform=0.06)
    if sl is not None:
        scene.paint(sl, (f < 1) & cav[sl], hu_j(8, 4), 4, tissue=7)

    # spleen: left posterior, long axis along the ribs
    (sl, f), _, _ = _organ(scene, rng, [-92, -35, 172], [24, 48, 55], [0, 0, -35], 5, 0.12, 8, deform=0.1)
    if sl is not None:
        scene.paint(sl, (f < 1) & cav[sl], hu_j(47, 3), 1)

    # pancreas: head near the duodenum, body over the aorta, tail to the splenic hilum
    ctrl = np.array([[25, 12, 122], [5, 10, 132], [-20, 4, 138], [-50, -10, 146], [-72, -22, 152]], float)
    ctrl += rng.normal(0, 3, ctrl.shape)
    path = smooth_path(ctrl, step=4.0)
    rad = np.interp(np.linspace(0, 1, len(path)), [0, 0.25, 1], np.array([15, 10, 8.5]) * U(0.9, 1.1))
    sl, sdf = tube(scene, path, rad)
    if sl is not None:
        lob = random_field(rng, 2.0, 12.0, terms=4)(*scene.grids(sl))
        scene.paint(sl, (sdf + lob < 0) & cav[sl], hu_j(42, 4), 11)

    # kidneys with renal pelvis; the right one is lower (under the liver)
    for lab, sgn, zc in ((2, 1, 88), (3, -1, 98)):
        (sl, f), c, r = _organ(scene, rng, [sgn * 72, -48, zc], [30, 21, 53], [0, sgn * 14, sgn * 28], 5, 0.1, 6,
                               deform=0.05)
        if sl is not None:
            scene.paint(sl, (f < 1) & cav[sl], hu_j(32, 3), lab)
            pel = ellipsoid(scene, c + np.array([-sgn * 16, 6, 0]), [8, 6, 16])
            if pel[0] is not None:
                scene.paint(pel[0], (pel[1] < 1) & (scene.label[pel[0]] == lab), hu_j(8, 3), lab, tissue=7)

    # adrenal glands: thin plates above-medial to the kidneys
    for lab, sgn, c in ((12, 1, [42, -35, 150]), (13, -1, [-42, -40, 142])):
        (sl, f), _, _ = _organ(scene, rng, c, [5, 14, 18], [0, 0, sgn * 30], 3, 0.1, 10, deform=0.08)
        if sl is not None:
            scene.paint(sl, (f < 1) & cav[sl], hu_j(25, 4), lab)


def _paint_vessels(scene, rng, hu_j):
    """Aorta, IVC and iliac branches, splenic/portal vein and the oesophagus."""
    U = rng.uniform

    # vessels: aorta (left of midline, in front of the spine) and IVC (right), with iliac branches
    ya, xa = -31 + rng.normal(0, 2), -12 + rng.normal(0, 2)
    ra = U(9, 12)
    _vessel(scene, [[xa, ya, 5], [xa + 2, ya + 1, 120], [xa, ya - 6, 260], [xa + 5, ya - 10, 400]], ra, hu_j(42, 3), 8)
    for sgn in (1, -1):
        _vessel(scene, [[xa, ya, 8], [xa + sgn * 30, ya + 4, -40], [xa + sgn * 50, ya + 8, -120]], ra * 0.6, hu_j(42, 3), None)
    yi, xi = -30 + rng.normal(0, 2), 24 + rng.normal(0, 2)
    ri = U(10, 13)
    _vessel(scene, [[xi, yi, 0], [xi, yi, 150], [xi + 3, yi + 12, 200], [xi, yi + 18, 300]], ri, hu_j(40, 3), 9)
    for sgn in (1, -1):
        _vessel(scene, [[xi, yi, 3], [xi + sgn * 25 - 15, yi + 2, -40], [xi + sgn * 45 - 15, yi + 6, -120]], ri * 0.6,
                hu_j(40, 3), None)
    # splenic vein behind the pancreas to the confluence, portal vein up into the liver hilum
    ctrl = np.array([[-78, -28, 155], [-45, -18, 146], [-12, -6, 136], [15, 2, 145], [40, 2, 162], [55, 0, 170]], float)
    ctrl += rng.normal(0, 2, ctrl.shape)
    _vessel(scene, smooth_path(ctrl, 4.0), U(4.5, 6.5), hu_j(40, 3), 10)
    # esophagus: behind the heart, joining the stomach's cardia
    ctrl = np.array([[-2, -28, 400], [-6, -25, 230], [-25, -12, 200], [-45, -5, 188]], float)
    path = smooth_path(ctrl, 4.0)
    sl, sdf = tube(scene, path, np.full(len(path), U(6.5, 8.5)))
    if sl is not None:
        body = scene.cavity[sl] | scene.thorax[sl] | (scene.tissue[sl] == 3)
        scene.paint(sl, (sdf < 0) & body, hu_j(40, 3), 5)


def _bowel(scene, rng, path, radii, wall, gas_frac, content, hu_j):
    sl, sdf = tube(scene, path, radii)
    if sl is None:
        return
    cav = scene.cavity[sl]
    inside = (sdf < 0) & cav
    scene.paint(sl, inside, hu_j(40, 4), 15)
    lumen = inside & (sdf < -wall)
    g = random_field(rng, 1.0, 40.0, terms=4)(*scene.grids(sl))
    thr = np.quantile(g, 1 - gas_frac) if np.size(g) > 1 else 0
    gas = lumen & (g > thr)
    tex = random_field(rng, content[1], 10.0, terms=3)(*scene.grids(sl))
    scene.paint(sl, lumen & ~gas, content[0] + np.broadcast_to(tex, lumen.shape), 15, tissue=7)
    scene.paint(sl, gas, -1000.0, 15, tissue=8)


def _vessel(scene, points, radius, hu, label):
    """A tube of constant radius through smoothed control points, inside the cavity or thorax."""
    pts = smooth_path(np.asarray(points, float), 5.0)
    sl, sdf = tube(scene, pts, np.full(len(pts), radius))
    if sl is None:
        return
    scene.paint(sl, (sdf < 0) & scene.interior[sl], hu, label)  # crosses the diaphragm


def paint_spine_and_muscles(scene, rng, hu_j):
    U = rng.uniform
    z0, z1 = float(scene.z[0]) - 40, float(scene.z[-1]) + 40
    body_h, disc_h = U(24, 29), U(7, 9)
    period = body_h + disc_h
    yc, rx, ry = -60 + rng.normal(0, 2), U(20, 24), U(15, 18)
    can_y, can_r = yc - ry - U(8, 10), U(7, 9)
    sl = scene.box((-rx * 3.5, can_y - 35, z0), (rx * 3.5, yc + ry + 2, z1))
    if sl is None:
        return
    x, y, z = scene.grids(sl)
    shape = tuple(s.stop - s.start for s in sl)
    lordosis = 4 * np.sin((z - 60) / 150)
    yy = y - lordosis
    # paraspinal muscles and psoas
    para = ((np.abs(x) - 32) / 22) ** 2 + ((yy - (can_y - 12)) / 20) ** 2 < 1
    psoas_r = np.clip((150 - z) / 150, 0, 1) * U(16, 22)
    psoas = ((np.abs(x) - 38) ** 2 + (yy - (yc + 6)) ** 2) < psoas_r**2
    body = scene.tissue[sl] > 0
    musc = (para | psoas) & body & (scene.tissue[sl] != 1)
    scene.paint(sl, musc, hu_j(50, 3), 0, tissue=3)
    # vertebral bodies (cortical shell + cancellous core) separated by discs
    phase = np.mod(z - U(0, period), period)
    in_body = np.broadcast_to(phase < body_h, shape)
    ell = (x / rx) ** 2 + ((yy - yc) / ry) ** 2
    ell = np.broadcast_to(ell, shape)
    vb = (ell < 1) & in_body
    disc = (ell < 1) & ~in_body
    shell = vb & ((ell > (1 - 2.2 / min(rx, ry)) ** 2) | np.broadcast_to((phase < 1.8) | (phase > body_h - 1.8), shape))
    scene.paint(sl, disc, hu_j(80, 6), 0, tissue=4)
    scene.paint(sl, vb, hu_j(330, 25), 14, tissue=5)
    scene.paint(sl, shell, hu_j(750, 60), 14, tissue=5)
    # posterior arch around the canal, spinous process, transverse processes
    rc = np.sqrt(x**2 + (yy - can_y) ** 2)
    arch = np.broadcast_to((rc < can_r + 5) & (yy < yc - ry + 3) & (phase < body_h + 2), shape)
    spinous = np.broadcast_to((np.abs(x) < 3.5) & (yy < can_y) & (yy > can_y - 30) & (phase > 4) & (phase < body_h), shape)
    trans = np.broadcast_to((np.abs(yy - (can_y + 4)) < 4) & (np.abs(x) < 38) & (phase > 6) & (phase < body_h - 6), shape)
    bone = (arch | spinous | trans) & body
    scene.paint(sl, bone, hu_j(600, 60), 14, tissue=5)
    canal = np.broadcast_to(rc < can_r, shape) & body
    scene.paint(sl, canal, hu_j(10, 3), 0, tissue=7)
    cord = np.broadcast_to(np.sqrt(x**2 + (yy - can_y - 1) ** 2) < can_r * 0.55, shape) & body
    scene.paint(sl, cord, hu_j(35, 3), 0, tissue=4)
    scene.spine = (yc, rx, ry)


def paint_thorax(scene, rng, hu_j):
    """Lung bases above the diaphragm, heart and mediastinum between them."""
    U = rng.uniform
    th = scene.thorax
    if not th.any():
        return
    hu_lung = hu_j(-860, 20)
    lung = th & (scene.label == 0) & (scene.tissue != 5)
    x, y, z = scene.ox[:, None, None], scene.oy[None, :, None], scene.z[None, None, :]
    medi = (np.abs(x + 5) < 18) & (y > -80)
    lung &= ~np.broadcast_to(medi, lung.shape)
    tex = random_field(rng, 15.0, 20.0)(x, y, z)
    scene.hu[lung] = np.broadcast_to(hu_lung + tex, lung.shape)[lung]
    scene.label[lung] = 16
    scene.tissue[lung] = 6
    med = th & np.broadcast_to(medi, th.shape) & (scene.label == 0) & (scene.tissue != 5)
    scene.hu[med] = hu_j(-60, 15)
    scene.tissue[med] = 2
    # heart sits on the central diaphragm
    hc = np.array([-18, 25, float(np.min(scene.dome)) + 58]) + rng.normal(0, 4, 3)
    sl, f = ellipsoid(scene, hc, np.array([68, 48, 60]) * U(0.9, 1.1), (0, 0, U(-30, -10)))
    if sl is not None:
        heart = (f < 1) & th[sl] & (scene.label[sl] != 5) & (scene.label[sl] != 8) & (scene.label[sl] != 9) & (
            scene.tissue[sl] != 5)
        scene.paint(sl, heart, hu_j(40, 3), 0)
    # a few lung vessels
    for _ in range(8):
        p0 = np.array([U(-90, 90), U(-70, 40), U(215, 300)])
        p1 = p0 + rng.normal(0, 25, 3)
        sl, sdf = tube(scene, [p0, p1], [U(1.5, 3), 1.0])
        if sl is not None:
            scene.paint(sl, (sdf < 0) & (scene.label[sl] == 16), hu_j(40, 5), 16, tissue=4)


def paint_ribs(scene, rng, A, B, skin, fat, muscle, hu_j):
    """Lower ribs in the body wall, descending from the spine around the flank towards the front."""
    U = rng.uniform
    inset = skin + fat + muscle * 0.55
    a, b = A - inset, B - inset * 0.9
    gap = U(24, 30)
    z_tops = np.arange(U(140, 150), float(scene.z[-1]) + 60, gap)
    hu = hu_j(520, 60)
    for i, z0 in enumerate(z_tops):
        front = np.clip(40 + 15 * i, 40, 110)  # lower ribs are shorter (floating ribs)
        for sgn in (1, -1):
            angles = np.deg2rad(np.linspace(-110, front, 14))
            px = sgn * a * np.cos(angles) * 0.98
            py = b * np.sin(angles) * np.where(np.sin(angles) < 0, 0.92, 1.0)
            pz = z0 - 35 * (np.sin(angles) + 1) / 2 * (angles > -np.pi / 2)
            pts = np.stack([px, py, pz], 1)
            sl, sdf = tube(scene, pts, np.full(len(pts), U(4.0, 5.5)), frame="body")
            if sl is not None:
                mask = (sdf < 0) & scene.body[sl] & (scene.tissue[sl] >= 2) & (scene.label[sl] == 0)
                scene.paint(sl, mask, hu, 17, tissue=5)
