"""Procedural videos with exact ground truth: textured sprites over a panning textured wall.

A clip is a small scene description (camera path, sprite poses per frame, textures) plus its
rendering. Scene geometry lives in normalised frame units (x / W, y / H), so the same seed gives
the same scene at 64x64 (training) and 256x256 (demos). Ground truth is analytic:

- a point on a sprite keeps its sprite-local coordinates and follows the sprite's affine pose;
- a point on the wall moves with the camera;
- a point is visible in a frame when it is inside the frame and no sprite drawn above its own
  layer covers it there (sprites are drawn in index order, the wall is below all of them).

Pixel coordinates follow the project convention: origin at the top-left corner of the top-left
pixel, pixel centres at i + 0.5. Shape masks are evaluated at pixel centres with the same
membership test the tracker of ground truth uses, so masks and visibility agree exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import cv2
import numpy as np

from difftrack.evaluation.queries import query_grid

SHAPES = ("disc", "square", "triangle", "diamond")
TEXTURES = ("speckled", "striped", "checkered", "photographic")
WALLS = ("brick", "speckled", "striped", "checkered", "photographic")
DIRECTIONS = ("left", "right", "up", "down")
VOCABULARY = sorted(set(
    "a the and moves over wall camera pans uniform still".split() + list(SHAPES) + list(TEXTURES) + list(WALLS)
    + list(DIRECTIONS)))

# Textures are drawn at this many pixels per frame unit, then resampled to the output size, so the
# scene does not depend on the output resolution.
_TEXTURE_RES = 256
_SPRITE_TEX = 96  # sprite texture side in pixels (covers sprite-local [-1, 1]^2)
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "grass", "gravel", "brick",
           "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "moon", "cell", "clock")


@dataclass
class Sprite:
    shape: str
    texture: str
    texture_image: np.ndarray  # float32 (S, S, 3) in [0, 1], sprite-local [-1, 1]^2
    # Pose per frame in normalised units: centre (T, 2) as (x, y), rotation (T,), half-size (T,)
    centre: np.ndarray
    angle: np.ndarray
    radius: np.ndarray

    @property
    def shape_id(self) -> int:
        return SHAPES.index(self.shape)

    @property
    def texture_id(self) -> int:
        return TEXTURES.index(self.texture)


@dataclass
class Clip:
    """A rendered clip and its scene. ``video`` is uint8 (T, H, W, 3) RGB."""

    video: np.ndarray
    caption: str
    seed: int
    wall: str
    wall_image: np.ndarray  # float32 texture of the wall, _TEXTURE_RES px per frame unit
    camera: np.ndarray  # (T, 2) top-left of the view in wall units (x, y)
    sprites: list[Sprite] = field(default_factory=list)
    masks: np.ndarray | None = None  # bool (T, S, H, W): visible pixels of each sprite

    @property
    def num_frames(self) -> int:
        return self.video.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.video.shape[1], self.video.shape[2]

    @property
    def labels(self) -> list[tuple[int, int]]:
        """(shape id, texture id) of each sprite, in mask order."""
        return [(s.shape_id, s.texture_id) for s in self.sprites]

    # ----- ground truth ------------------------------------------------------------------------
    def _to_local(self, sprite: Sprite, t: int, xy_norm: np.ndarray) -> np.ndarray:
        d = xy_norm - sprite.centre[t]
        c, s = np.cos(sprite.angle[t]), np.sin(sprite.angle[t])
        # inverse rotation, then inverse scale
        lx = (c * d[..., 0] + s * d[..., 1]) / sprite.radius[t]
        ly = (-s * d[..., 0] + c * d[..., 1]) / sprite.radius[t]
        return np.stack([lx, ly], -1)

    def _from_local(self, sprite: Sprite, t: int, local: np.ndarray) -> np.ndarray:
        c, s = np.cos(sprite.angle[t]), np.sin(sprite.angle[t])
        r = sprite.radius[t]
        x = c * local[..., 0] - s * local[..., 1]
        y = s * local[..., 0] + c * local[..., 1]
        return np.stack([x, y], -1) * r + sprite.centre[t]

    def _layer_at(self, t: int, xy_norm: np.ndarray) -> np.ndarray:
        """Index of the topmost sprite at each point (-1: the wall)."""
        layer = np.full(xy_norm.shape[:-1], -1, dtype=np.int64)
        for i, sp in enumerate(self.sprites):
            layer[_inside(sp.shape, self._to_local(sp, t, xy_norm))] = i
        return layer

    def track(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth for query points (t, x, y) in pixels: tracks (N, T, 2) in pixels, visible (N, T) bool."""
        queries = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
        h, w = self.size
        scale = np.array([w, h], dtype=np.float64)
        frames = self.num_frames
        tracks = np.zeros((len(queries), frames, 2))
        visible = np.zeros((len(queries), frames), dtype=bool)
        for n, (tq, x, y) in enumerate(queries):
            tq = int(tq)
            p = np.array([x, y]) / scale
            owner = int(self._layer_at(tq, p[None])[0])
            if owner >= 0:
                local = self._to_local(self.sprites[owner], tq, p)
                path = np.stack([self._from_local(self.sprites[owner], t, local) for t in range(frames)])
            else:
                path = p + self.camera[tq] - self.camera  # wall point: fixed in wall coordinates
            for t in range(frames):
                q = path[t]
                in_frame = 0 <= q[0] < 1 and 0 <= q[1] < 1
                on_top = all(not _inside(sp.shape, self._to_local(sp, t, q[None]))[0]
                             for sp in self.sprites[owner + 1:])
                visible[n, t] = in_frame and on_top
            tracks[n] = path * scale
        return tracks.astype(np.float32), visible


# ----- shapes --------------------------------------------------------------------------------

def inside_shape(shape: str, x, y):
    """Whether sprite-local points (x, y) lie in ``shape``; numpy arrays or torch tensors (operators only, so
    the photo clip renderer tests membership with the very same arithmetic on any device)."""
    if shape == "disc":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (abs(x) <= 0.85) & (abs(y) <= 0.85)
    if shape == "triangle":  # apex up, base at y = 0.75
        return (y <= 0.75) & (abs(x) <= (y + 0.95) * 0.55)
    if shape == "diamond":
        return abs(x) + abs(y) <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def _inside(shape: str, local: np.ndarray) -> np.ndarray:
    return inside_shape(shape, local[..., 0], local[..., 1])


# ----- textures ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return np.ascontiguousarray(img[..., :3]).astype(np.float32) / 255.0


def _colour(rng) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(90, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def _noise_texture(rng, h, w) -> np.ndarray:
    """Coloured multi-scale value noise: distinctive at every scale down to a few pixels."""
    out = np.zeros((h, w, 3), np.float32)
    for cells, weight in ((4, 0.5), (12, 0.3), (40, 0.35), (max(h, w) // 4, 0.3)):
        low = rng.random((max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w)), 3)).astype(np.float32)
        out += weight * cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    out -= out.min()
    return out / max(out.max(), 1e-6)


def _stripes(rng, h, w, period) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (np.cos(theta) * xx + np.sin(theta) * yy) / period
    m = (np.floor(phase) % 2)[..., None]
    return a * m + b * (1 - m)


def _checker(rng, h, w, cell) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    yy, xx = np.mgrid[0:h, 0:w]
    m = ((xx // cell + yy // cell) % 2)[..., None].astype(np.float32)
    return a * m + b * (1 - m)


def _brick(rng, h, w, uniform=False) -> np.ndarray:
    mortar = np.float32([0.8, 0.78, 0.72])
    base = np.float32([0.62, 0.25, 0.17]) if uniform else _colour(rng)
    bh, bw = 14, 30
    out = np.empty((h, w, 3), np.float32)
    out[:] = mortar
    for r in range(0, h // bh + 1):
        off = (bw // 2) * (r % 2)
        for c in range(-1, w // bw + 2):
            shade = 1.0 if uniform else rng.uniform(0.75, 1.15)
            y0, x0 = r * bh + 1, c * bw + off + 1
            out[y0:y0 + bh - 2, max(0, x0):max(0, x0 + bw - 2)] = np.clip(base * shade, 0, 1)
    if not uniform:
        out += 0.08 * (rng.random((h, w, 1)).astype(np.float32) - 0.5)
    return np.clip(out, 0, 1)


def _photo_crop(rng, h, w) -> np.ndarray:
    img = _photo(_PHOTOS[rng.integers(len(_PHOTOS))])
    zoom = rng.uniform(0.6, 1.2)  # photo pixels per texture pixel
    ch, cw = min(img.shape[0], int(h * zoom)), min(img.shape[1], int(w * zoom))
    y0 = rng.integers(0, img.shape[0] - ch + 1)
    x0 = rng.integers(0, img.shape[1] - cw + 1)
    crop = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:  # tint grey photographs and recolour some colour ones
        crop = np.clip(crop * (0.5 + _colour(rng)), 0, 1)
    return crop


def _texture(kind: str, rng, h, w, scale: float) -> np.ndarray:
    """``scale``: texture pixels per output pixel at 64x64 (so periods are a few output pixels there)."""
    if kind == "speckled":
        return _noise_texture(rng, h, w)
    if kind == "striped":
        return _stripes(rng, h, w, period=rng.uniform(3, 7) * scale)
    if kind == "checkered":
        return _checker(rng, h, w, cell=int(rng.uniform(3, 7) * scale))
    if kind == "photographic":
        return _photo_crop(rng, h, w)
    if kind == "brick":
        return _brick(rng, h, w)
    raise ValueError(f"unknown texture {kind!r}")


# ----- scene ---------------------------------------------------------------------------------

def _smooth_path(rng, frames, start, speed, wobble) -> np.ndarray:
    """A smooth path: constant velocity, a slow turn, and a small sinusoidal wobble."""
    t = np.arange(frames, dtype=np.float64)[:, None]
    direction = rng.normal(size=2)
    velocity = speed * direction / np.linalg.norm(direction)
    accel = rng.normal(size=2) * speed * 0.08
    omega = rng.uniform(0.3, 1.0)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    return start + velocity * t + 0.5 * accel * t * t + wobble * np.sin(omega * t + phase)


def direction_word(delta: np.ndarray) -> str:
    dx, dy = delta
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def generate_clip(seed: int, num_frames: int = 8, height: int = 64, width: int = 64, max_sprites: int = 3,
                  speed: float | None = None, control: bool = False, aperiodic: bool = False) -> Clip:
    """Render clip ``seed``. ``speed`` scales all motion (default: drawn per clip, like a random frame
    stride); ``control`` gives the sprite-free "camera pans over a uniform brick wall" clip;
    ``aperiodic`` draws walls and sprite textures only from the locally distinctive kinds (speckled,
    photographic), with the same random draws otherwise."""
    rng = np.random.default_rng(seed)
    token = 1.0 / 16  # one token of the 64x64 / patch 4 model, in frame units
    if speed is None:
        speed = rng.choice([0.6, 1.0, 1.4, 1.8])  # the random frame stride
    scale = _TEXTURE_RES / 64

    # Camera: a pan of up to one token a frame (times the stride), sometimes still.
    still = (not control) and rng.random() < 0.12
    pan_speed = 0.0 if still else rng.uniform(0.3, 1.0) * token * speed
    cam = _smooth_path(rng, num_frames, np.zeros(2), pan_speed, wobble=0.0 if still else 0.1 * token)
    cam -= cam.min(0)
    extent = cam.max(0) + 1.0
    wall_h, wall_w = int(np.ceil(extent[1] * _TEXTURE_RES)) + 2, int(np.ceil(extent[0] * _TEXTURE_RES)) + 2
    if control:
        wall = "brick"
        wall_image = _brick(rng, wall_h, wall_w, uniform=True)
    else:
        wall = WALLS[rng.choice(len(WALLS), p=[0, 0.47, 0, 0, 0.53] if aperiodic else [0.12, 0.3, 0.12, 0.12, 0.34])]
        wall_image = _texture(wall, rng, wall_h, wall_w, scale)

    sprites: list[Sprite] = []
    if not control:
        for _ in range(rng.integers(1, max_sprites + 1)):
            shape = SHAPES[rng.integers(len(SHAPES))]
            texture = TEXTURES[rng.choice(len(TEXTURES), p=[0.5, 0, 0, 0.5] if aperiodic else [0.3, 0.2, 0.2, 0.3])]
            tex = _texture(texture, rng, _SPRITE_TEX, _SPRITE_TEX, scale=_SPRITE_TEX / (2 * 0.19 * 64))
            r0 = rng.uniform(0.12, 0.26)
            # Screen motion of 0.5-2 tokens a frame, starting anywhere near the frame.
            sp_speed = rng.uniform(0.5, 2.0) * token * speed
            start = rng.uniform(0.1, 0.9, size=2)
            centre = _smooth_path(rng, num_frames, start, sp_speed, wobble=0.3 * token)
            angle = rng.uniform(-np.pi, np.pi) + rng.uniform(-0.12, 0.12) * speed * np.arange(num_frames)
            radius = r0 * np.exp(rng.uniform(-0.03, 0.03) * speed * np.arange(num_frames))
            sprites.append(Sprite(shape, texture, tex, centre, angle, radius))

    clip = Clip(video=np.zeros((num_frames, height, width, 3), np.uint8), caption="", seed=seed, wall=wall,
                wall_image=wall_image, camera=cam, sprites=sprites)
    clip.video, clip.masks = _render(clip, height, width)
    clip.caption = _caption(clip)
    return clip


def _render(clip: Clip, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    frames = len(clip.camera)
    # The wall resampled once to the output scale; each frame is a sub-pixel translated window of it.
    wall = cv2.resize(clip.wall_image, (int(round(clip.wall_image.shape[1] * width / _TEXTURE_RES)),
                                        int(round(clip.wall_image.shape[0] * height / _TEXTURE_RES))),
                      interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    centres = np.stack([(xs + 0.5) / width, (ys + 0.5) / height], -1)  # pixel centres, normalised
    video = np.zeros((frames, height, width, 3), np.uint8)
    masks = np.zeros((frames, len(clip.sprites), height, width), bool)
    s = _SPRITE_TEX
    for t in range(frames):
        shift = np.float64([[1, 0, -clip.camera[t, 0] * width], [0, 1, -clip.camera[t, 1] * height]])
        frame = cv2.warpAffine(wall, shift, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        for i, sp in enumerate(clip.sprites):
            local = clip._to_local(sp, t, centres)
            inside = _inside(sp.shape, local)
            if not inside.any():
                continue
            mx = ((local[..., 0] + 1) * 0.5 * s - 0.5).astype(np.float32)
            my = ((local[..., 1] + 1) * 0.5 * s - 0.5).astype(np.float32)
            tex = cv2.remap(sp.texture_image, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            frame[inside] = tex[inside]
            masks[t, :i, inside] = False
            masks[t, i] = inside
        video[t] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    return video, masks


def _caption(clip: Clip) -> str:
    if not clip.sprites:
        return "the camera pans over a uniform brick wall"
    parts = []
    # Describe the two largest sprites, biggest first.
    order = sorted(range(len(clip.sprites)), key=lambda i: -clip.sprites[i].radius[0])[:2]
    for i in order:
        sp = clip.sprites[i]
        parts.append(f"a {sp.texture} {sp.shape} moves {direction_word(sp.centre[-1] - sp.centre[0])}")
    return " and ".join(parts) + f" over a {clip.wall} wall"


def to_tapvid(clip: Clip, num_points: int, seed: int, grid: bool = False) -> dict:
    """A TAP-Vid-style dict for ``clip``: 'video' uint8 (T, H, W, 3), 'points' float32 (N, T, 2) as
    normalised (x, y) in [0, 1], 'occluded' bool (N, T). Points are a frame-0 grid (``grid``) or drawn
    uniformly over frames and pixels, each visible at its own query frame."""
    h, w = clip.size
    rng = np.random.default_rng(seed)
    if grid:
        queries = query_grid(max(1, int(round(np.sqrt(num_points)))), h, w)
    else:
        queries = np.stack([rng.integers(0, clip.num_frames, num_points), rng.uniform(0, w, num_points),
                            rng.uniform(0, h, num_points)], -1)
    tracks, visible = clip.track(queries)
    return {"video": clip.video.copy(),
            "points": (tracks / np.float32([w, h])).astype(np.float32),
            "occluded": ~visible}
