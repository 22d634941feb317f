"""Synthetic scene: pinhole camera over a tilted table, one object, sensor noise, dropouts and lighting."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from training.synth.shapes import CATEGORIES, fractal_noise, table_albedo

# Focal length in pixels per pixel of the shorter image side: the short side sees about 0.2 m of the table
# at 0.6 m, so the scene looks the same at every resolution.
FOCAL_FACTOR = 3.0
# Slopes (rise over run) past which a structured-light sensor starts to lose, then always loses, the surface.
STEEP_SLOPE_START = float(np.tan(np.radians(55)))
STEEP_SLOPE_ALWAYS = float(np.tan(np.radians(72)))
# Surface undulation of good parts (m): natural variation the model must learn to accept.
UNDULATION = 0.0003
CORNER_DROPOUT_RATE = 0.1  # share of parts that lose one image corner of the table


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at the origin looking along +z (x right, y down); principal point at the centre."""

    height: int
    width: int
    focal_px: float

    @classmethod
    def for_size(cls, height: int, width: int) -> Camera:
        return cls(height, width, FOCAL_FACTOR * min(height, width))

    @property
    def cx(self) -> float:
        return (self.width - 1) / 2.0

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """x/z and y/z of every pixel's viewing ray: two (H, W) float64 arrays (so x = rx·z, y = ry·z)."""
        u = (np.arange(self.width, dtype=np.float64) - self.cx) / self.focal_px
        v = (np.arange(self.height, dtype=np.float64) - self.cy) / self.focal_px
        return np.broadcast_to(u[None, :], (self.height, self.width)), np.broadcast_to(
            v[:, None], (self.height, self.width)
        )


@dataclass(frozen=True)
class PartSpec:
    """Everything that makes one part (and its view) different from another; defects come on top."""

    category: str
    camera: Camera
    seed: int  # textures, lighting, noise and dropouts
    table_distance: float  # m, along the optical axis
    tilt: float  # rad, table normal away from the optical axis
    tilt_azimuth: float  # rad
    center: tuple[float, float]  # m, object centre on the table, table frame
    rotation: float  # rad, object about the table normal
    scale: tuple[float, float]  # in-plane scale along the object's own axes
    height_scale: float
    noise_sigma: float  # m, z noise of the sensor


def sample_part_spec(category: str, camera: Camera, rng: np.random.Generator) -> PartSpec:
    """Draw a part: table 0.55–0.65 m away tilted ≤ 3°, object shifted ≤ 12 mm, any rotation, ±8 % size."""
    if category not in CATEGORIES:
        raise KeyError(f"unknown synthetic category {category!r}; expected one of {sorted(CATEGORIES)}")
    shift, shift_dir = rng.uniform(0, 0.012), rng.uniform(0, 2 * np.pi)
    size, aspect = rng.uniform(0.92, 1.08), rng.uniform(0.96, 1.04)
    return PartSpec(
        category=category,
        camera=camera,
        seed=int(rng.integers(0, 2**63 - 1)),
        table_distance=float(rng.uniform(0.55, 0.65)),
        tilt=float(np.radians(rng.uniform(0, 3))),
        tilt_azimuth=float(rng.uniform(0, 2 * np.pi)),
        center=(float(shift * np.cos(shift_dir)), float(shift * np.sin(shift_dir))),
        rotation=float(rng.uniform(0, 2 * np.pi)),
        scale=(float(size * aspect), float(size / aspect)),
        height_scale=float(rng.uniform(0.9, 1.1)),
        noise_sigma=float(rng.uniform(0.0001, 0.0003)),
    )


@dataclass(frozen=True)
class Scene:
    """A defect-free part, layer by layer, all (H, W) image space; defects edit `height`/`albedo` copies.

    `height`: float64 m above the table (0 = table). `albedo`: (H, W, 3) float32 reflectance in [0, 1].
    `light`: (H, W, 3) float32 illumination gain, a function of the pixel only (never of the surface
    geometry, so a geometry-only defect cannot show in colour). `dropout`: bool, the sensor saw nothing.
    `slope`: float64 surface slope of the object (rise over run). `denom`: n·ray of the table plane.
    """

    spec: PartSpec
    rays: tuple[np.ndarray, np.ndarray]
    plane_offset: float  # c in n·X = c, n pointing away from the camera
    denom: np.ndarray
    height: np.ndarray
    slope: np.ndarray
    albedo: np.ndarray
    light: np.ndarray
    dropout: np.ndarray
    z_noise: np.ndarray
    rgb_noise: np.ndarray

    @property
    def object_mask(self) -> np.ndarray:
        """(H, W) bool: the pixels that see the object rather than the table."""
        mask: np.ndarray = self.height > 0
        return mask

    @property
    def px_per_metre(self) -> float:
        """Image scale on the table (pixels per metre), for sizing defects."""
        return self.spec.camera.focal_px / self.spec.table_distance


def _table_frame(spec: PartSpec) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray]:
    """Unit normal n (away from the camera), offset c (n·X = c), in-plane axes e1, e2 and the origin P0."""
    st = np.sin(spec.tilt)
    n = np.array([st * np.cos(spec.tilt_azimuth), st * np.sin(spec.tilt_azimuth), np.cos(spec.tilt)])
    origin = np.array([0.0, 0.0, spec.table_distance])
    e1 = np.array([1.0, 0.0, 0.0]) - n[0] * n
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    return n, float(n @ origin), e1, e2, origin


def build_scene(spec: PartSpec) -> Scene:
    """Render the defect-free layers of one part. Deterministic in `spec` (random draws from `spec.seed`)."""
    category = CATEGORIES[spec.category]
    cam = spec.camera
    rng = np.random.default_rng(spec.seed)
    rx, ry = cam.rays()
    n, c, e1, e2, origin = _table_frame(spec)
    denom = n[0] * rx + n[1] * ry + n[2]
    # Where each ray meets the table, in table coordinates: the object is a height field over the table.
    # Colour and height are both looked up at this point, so a height change never moves the colour.
    t = c / denom
    rel = [t * rx - origin[0], t * ry - origin[1], t - origin[2]]
    a = sum(rel[i] * e1[i] for i in range(3)) - spec.center[0]
    b = sum(rel[i] * e2[i] for i in range(3)) - spec.center[1]
    cos_r, sin_r = np.cos(spec.rotation), np.sin(spec.rotation)
    p = (cos_r * a + sin_r * b) / spec.scale[0]
    q = (-sin_r * a + cos_r * b) / spec.scale[1]
    height = spec.height_scale * category.height(p, q)

    # Object-frame texture and undulation maps at about one texel per image pixel, sampled by remap.
    px_per_m = cam.focal_px / spec.table_distance
    texels = int(np.clip(np.ceil(2 * category.extent * px_per_m * max(spec.scale)), 32, 2048))
    grid = np.linspace(-category.extent, category.extent, texels)
    tex_p, tex_q = np.meshgrid(grid, grid)
    object_albedo = category.albedo(rng, tex_p, tex_q)
    undulation = fractal_noise(rng, (texels, texels), cells=3, octaves=2)
    maps = np.dstack([object_albedo, undulation])
    to_texel = (texels - 1) / (2 * category.extent)
    map_x = ((p + category.extent) * to_texel).astype(np.float32)
    map_y = ((q + category.extent) * to_texel).astype(np.float32)
    sampled = cv2.remap(maps, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    on_object = height > 0
    # The undulation fades in over the first 2 mm so that the object's outline stays where it was.
    height = np.where(on_object, height + UNDULATION * sampled[..., 3] * np.clip(height / 0.002, 0, 1), 0.0)
    height = np.maximum(height, 0.0) * on_object
    albedo = table_albedo(rng, (cam.height, cam.width))
    albedo[on_object] = sampled[..., :3][on_object]

    pitch = 1.0 / px_per_m
    gy, gx = np.gradient(height, pitch)
    slope = np.hypot(gx, gy)
    light = _lighting(rng, cam)
    dropout = _dropouts(rng, slope, on_object, px_per_m)
    z_noise = rng.standard_normal((cam.height, cam.width)) * spec.noise_sigma
    rgb_noise = (rng.standard_normal((cam.height, cam.width, 3)) * (1.5 / 255)).astype(np.float32)
    return Scene(spec, (rx, ry), c, denom, height, slope, albedo, light, dropout, z_noise, rgb_noise)


def _lighting(rng: np.random.Generator, cam: Camera) -> np.ndarray:
    """Gain × vignetting × a linear gradient × a slight colour tint; (H, W, 3) float32, pixel-only."""
    h, w = cam.height, cam.width
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    un, vn = (u - cam.cx) / (w / 2), (v - cam.cy) / (h / 2)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = 1.0 + rng.uniform(0, 0.1) * (np.cos(direction) * un + np.sin(direction) * vn)
    field = rng.uniform(0.85, 1.1) * (1.0 - rng.uniform(0.1, 0.25) * (un**2 + vn**2) / 2) * ramp
    tint = 1.0 + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    return (field[..., None] * tint[None, None, :]).astype(np.float32)


def _dropouts(rng: np.random.Generator, slope: np.ndarray, on_object: np.ndarray, px_per_m: float) -> np.ndarray:
    """Where the sensor sees nothing: steep walls, a few blobs (often on the object), speckle on the object."""
    h, w = slope.shape
    threshold = STEEP_SLOPE_START + (STEEP_SLOPE_ALWAYS - STEEP_SLOPE_START) * rng.random((h, w))
    dropout = on_object & (slope > threshold)
    blobs = np.zeros((h, w), np.uint8)
    ys, xs = np.nonzero(on_object)
    for _ in range(int(rng.poisson(2.5))):
        # Most blobs sit on the object (specular spots), the rest anywhere on the table.
        on = len(ys) > 0 and rng.random() < 0.6
        k = int(rng.integers(len(ys))) if on else 0
        cx = float(xs[k]) if on else rng.uniform(0, w - 1)
        cy = float(ys[k]) if on else rng.uniform(0, h - 1)
        axes = rng.uniform(0.0008, 0.003, 2) * px_per_m
        box = ((cx, cy), (float(2 * axes[0]) + 1, float(2 * axes[1]) + 1), float(rng.uniform(0, 180)))
        cv2.ellipse(blobs, box, 1, thickness=-1)
    # Now and then the table falls out of the sensor's range in one image corner. The reference's
    # three-corner plane fit then has no points there: this exercises the preprocessing's fallback.
    if rng.random() < CORNER_DROPOUT_RATE:
        corner = (float(rng.choice([0, w - 1])), float(rng.choice([0, h - 1])))
        radius = int(rng.uniform(0.12, 0.25) * min(h, w))
        cv2.circle(blobs, (int(corner[0]), int(corner[1])), radius, 1, thickness=-1)
    dropout |= blobs.astype(bool)
    dropout |= on_object & (rng.random((h, w)) < 0.002)
    return dropout


def compose(
    scene: Scene,
    height: np.ndarray,
    albedo: np.ndarray,
    missing: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sensor outputs from (possibly defect-edited) layers.

    `height`: (H, W) float64 m above the table; `albedo`: (H, W, 3) float32 in [0, 1]; `missing`: (H, W)
    bool, extra points the sensor loses (a defect's deep core). Returns `rgb` (H, W, 3) uint8, `xyz`
    (H, W, 3) float32 camera frame metres with all three exactly 0 where nothing was seen, and `valid`
    (H, W) bool. Unchanged inputs give bit-identical outputs: noise and dropouts come from the scene.
    """
    rx, ry = scene.rays
    z = (scene.plane_offset - height) / scene.denom + scene.z_noise
    xyz = np.stack([rx * z, ry * z, z], axis=-1).astype(np.float32)
    valid = ~scene.dropout if missing is None else ~(scene.dropout | missing)
    xyz[~valid] = 0.0
    rgb = np.clip(np.rint((albedo * scene.light + scene.rgb_noise) * 255.0), 0, 255).astype(np.uint8)
    return rgb, xyz, valid
