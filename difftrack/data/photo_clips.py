"""Clips of photographs with exact motion: a camera moving over one photograph (the wall) and one or two cut-out
sprites, textured with crops of other photographs, moving over it on their own paths.

A clip is drawn from its seed as a :class:`PhotoScene`: for every frame and layer the affine map from the screen to
the layer's own coordinates, and for every layer the map from those to its photograph. :func:`render` renders a
batch of scenes with one bilinear ``grid_sample`` from the photographs packed into one tensor (:class:`PhotoBank`),
on the CPU or a GPU. Ground truth (:meth:`PhotoScene.track`) goes through the same maps and the same membership test
as the renderer, so it is exact:

- a wall point keeps its place on the photograph; a sprite point keeps its sprite-local coordinates;
- a point is visible in a frame when it is inside the frame and no sprite above its own layer covers it (the wall is
  layer 0, sprites are drawn in index order above it); the renderer shows at each pixel centre the topmost layer
  whose test passes there.

Units. The screen is in frame units (x / size, y / size), as in :mod:`difftrack.data.synthetic`, so a seed gives
the same scene at every output size, and motion is measured in tokens of a 16 x 16 grid (the embedded models' grid
at every pixels-per-token setting). Photographs are in view units: a photograph's shorter side is ``PHOTO_SPAN``
(two) and the camera sees one by one at zoom 1, so the bank stores every photograph with a shorter side of
``PHOTO_SPAN * size`` pixels and one texel lands on about one output pixel. Paths are smooth and bounded
(sinusoids), so the camera stays on its photograph however long the clip, and sprites leave the frame and return.

Layer membership and ground truth are computed in float64 by the same torch operations on every device (separate
elementwise operations, each rounded by IEEE rules), so visibility is bit-identical on the CPU and a GPU; colours are
sampled in float32 and are bit-identical on the same device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from difftrack.data.synthetic import SHAPES, direction_word, inside_shape
from difftrack.errors import UserError

TOKEN = 1.0 / 16  # one token of the embedded models' 16 x 16 grid, in frame units
PHOTO_SPAN = 2.0  # a photograph's shorter side in view units; the camera sees 1 x 1 at zoom 1
MAX_SPRITES = 2
LAYERS = 1 + MAX_SPRITES  # the wall, then the sprites from the bottom up
SPEEDS = (0.6, 1.0, 1.4, 1.8)  # a clip's motion factor, like a random frame stride (the generator's values)
STILL_CAMERA = 0.12  # fraction of clips whose camera does not move
MAX_LOG_ZOOM = 0.12  # the camera's zoom stays within exp(+-0.12), about +-13 %
MAX_TILT = 0.1  # the camera's roll stays within +-0.1 rad
GAP = 2  # texels between photographs in the bank: bilinear sampling near an edge never reads a neighbour
EDGE = TOKEN  # view units kept between what the camera or a sprite's texture sees and a photograph's edge: at
# least one texel (the bilinear footprint) from 16 pixels up, and the same at every size (scenes stay size-free)
RENDER_CHUNK = 8  # frames rendered at once by render_video (bounds memory for long clips)
CROP_CANDIDATES = 4  # a sprite's texture is the most detailed of this many random crops
_DETAIL_GRID = np.meshgrid((np.arange(8) + 0.5) / 4 - 1, (np.arange(8) + 0.5) / 4 - 1)  # 8 x 8 points of [-1, 1]^2


def _resize_short_side(photo: np.ndarray, short: int) -> torch.Tensor:
    """float32 (3, h, w) in [0, 1] with the shorter side ``short``; resampled in float64 (antialiased bilinear), so
    that machines whose float64 sums differ in the last bit still agree after rounding to float32 (almost always:
    the frozen sets' manifest holds the bank's checksum to tell such a machine apart)."""
    h, w = photo.shape[:2]
    scale = short / min(h, w)
    target = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].double() / 255
    if target != (h, w):
        image = F.interpolate(image, size=target, mode="bilinear", antialias=True, align_corners=False)
    return image[0].clamp(0, 1).float()


class PhotoBank:
    """Photographs resampled for clips of ``size`` x ``size`` pixels, packed side by side into one float32 tensor
    (``atlas``, (1, 3, H, W)) on ``device``. ``photos``: uint8 (H, W, 3) RGB arrays, at least one."""

    def __init__(self, photos: Sequence[np.ndarray], size: int, device="cpu"):
        if not len(photos):
            raise UserError("no photographs to render clips from")
        for photo in photos:
            if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
                raise UserError(f"a photograph must be uint8 (H, W, 3) RGB, got {photo.dtype} {photo.shape}")
        if size < 1:
            raise UserError(f"clip size {size} is not a positive number of pixels")
        images = [_resize_short_side(photo, round(PHOTO_SPAN * size)) for photo in photos]
        atlas = torch.zeros(3, max(image.shape[1] for image in images),
                            sum(image.shape[2] for image in images) + GAP * (len(images) - 1))
        boxes, left = [], 0
        for image in images:
            atlas[:, :image.shape[1], left:left + image.shape[2]] = image
            boxes.append((left, 0, image.shape[2], image.shape[1]))
            left += image.shape[2] + GAP
        self.size = size
        self.device = torch.device(device)
        self.atlas = atlas[None].to(self.device)
        self.boxes = np.array(boxes, dtype=np.float64)  # (P, 4): left, top, width, height in texels
        # (P, 2): width, height in view units, from the photographs as given (not their rounded resampled sizes), so
        # that a scene does not depend on the clip size
        self.extent = np.array([photo.shape[1::-1] for photo in photos], np.float64)
        self.extent *= PHOTO_SPAN / self.extent.min(1, keepdims=True)
        self.grey = np.array([bool((p[..., 0] == p[..., 1]).all() and (p[..., 1] == p[..., 2]).all()) for p in photos])
        self._luminance = atlas.mean(0).numpy()  # on the CPU whatever the device: scenes are drawn there

    def view_to_texel(self, photo: int) -> np.ndarray:
        """(2, 3): view units of photograph ``photo`` -> bank texels (texel edges at integers)."""
        left, top, width, height = self.boxes[photo]
        scale = np.array([width, height]) / self.extent[photo]
        return np.array([[scale[0], 0, left], [0, scale[1], top]])

    def detail(self, photo: int, local_to_view: np.ndarray) -> float:
        """Standard deviation of the luminance over an 8 x 8 grid of points of the square [-1, 1]^2 mapped by
        ``local_to_view`` (2, 3) onto photograph ``photo``: how much texture a sprite cut from there has."""
        tx, ty = _apply(_compose(self.view_to_texel(photo), local_to_view), *_DETAIL_GRID)
        return float(self._luminance[ty.astype(int), tx.astype(int)].std())

    def __len__(self) -> int:
        return len(self.boxes)

    def digest(self) -> str:
        """SHA-256 of the resampled photographs: tells a changed resampling apart from a changed renderer."""
        return hashlib.sha256(self.atlas.cpu().numpy().tobytes()).hexdigest()


def _apply(affine, x, y):
    """An affine map (..., 2, 3) applied to points (x, y); leading dimensions broadcast."""
    return (affine[..., 0, 0] * x + affine[..., 0, 1] * y + affine[..., 0, 2],
            affine[..., 1, 0] * x + affine[..., 1, 1] * y + affine[..., 1, 2])


def _covers(shape, x, y):
    """Whether sprites of shape index ``shape`` (broadcast against x, y) cover their local points (x, y)."""
    covered = torch.zeros(torch.broadcast_shapes(shape.shape, x.shape), dtype=torch.bool, device=x.device)
    for index, name in enumerate(SHAPES):
        chosen = shape == index
        if chosen.any():
            covered |= chosen & inside_shape(name, x, y)
    return covered


def _top_layer(screen_to_layer, shape, present, x, y):
    """Index of the topmost layer at screen points (x, y) in frame units: 0 (the wall, which covers everything) or
    the last sprite whose shape covers the point. ``screen_to_layer`` (..., LAYERS, 2, 3), ``shape`` and ``present``
    (..., LAYERS); the leading dimensions broadcast against x and y. The renderer and the ground truth both call it."""
    top = torch.zeros(torch.broadcast_shapes(screen_to_layer.shape[:-3], x.shape, y.shape), dtype=torch.long,
                      device=x.device)
    for layer in range(1, screen_to_layer.shape[-3]):
        lx, ly = _apply(screen_to_layer[..., layer, :, :], x, y)
        top = torch.where(_covers(shape[..., layer], lx, ly) & present[..., layer], layer, top)
    return top


def _similarity(scale, angle, offset) -> np.ndarray:
    """(..., 2, 3): p -> scale R(angle) p + offset."""
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    affine = np.empty(np.shape(c) + (2, 3))
    affine[..., 0, 0], affine[..., 0, 1], affine[..., 1, 0], affine[..., 1, 1] = c, -s, s, c
    affine[..., 2] = offset
    return affine


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer after inner, both (..., 2, 3)."""
    linear = outer[..., :2] @ inner[..., :2]
    return np.concatenate([linear, (outer[..., :2] @ inner[..., 2:]) + outer[..., 2:]], -1)


def _invert(affine: torch.Tensor) -> torch.Tensor:
    a, b, c = affine[..., 0, 0], affine[..., 0, 1], affine[..., 0, 2]
    d, e, f = affine[..., 1, 0], affine[..., 1, 1], affine[..., 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return torch.stack([torch.stack([ia, ib, -(ia * c + ib * f)], -1),
                        torch.stack([id_, ie, -(id_ * c + ie * f)], -1)], -2)


def _bounded_path(rng, t: np.ndarray, middle, amplitude, speed: float) -> np.ndarray:
    """(T, 2): a smooth path within ``middle`` +- ``amplitude``, one sinusoid per axis, whose peak speed along a
    random direction is ``speed`` (units a frame)."""
    direction = rng.uniform(0, 2 * np.pi)
    amplitude = np.asarray(amplitude, np.float64)
    omega = speed * np.abs([np.cos(direction), np.sin(direction)]) / amplitude
    phase = rng.uniform(0, 2 * np.pi, size=2)
    return middle + amplitude * np.sin(omega * t[:, None] + phase)


def _wobble(rng, t: np.ndarray, amplitude: float, speed: float) -> np.ndarray:
    """(T,): amplitude x sin(omega t + phase), slow (omega 0.02-0.1 rad a frame, times the clip's speed)."""
    return amplitude * np.sin(rng.uniform(0.02, 0.1) * speed * t + rng.uniform(0, 2 * np.pi))


@dataclass
class PhotoScene:
    """One clip's scene; layer 0 is the wall, layers 1.. the sprite slots (``present`` says which are used)."""

    seed: int
    size: int  # output side in pixels
    screen_to_layer: np.ndarray  # float64 (T, LAYERS, 2, 3): frame units -> the layer's coordinates
    layer_to_texel: np.ndarray  # float64 (LAYERS, 2, 3): the layer's coordinates -> bank texels (edges at integers)
    shape: np.ndarray  # int64 (LAYERS,): index into SHAPES (the wall's entry is unused)
    present: np.ndarray  # bool (LAYERS,)
    photo: np.ndarray  # int64 (LAYERS,): bank index of each layer's photograph
    tint: np.ndarray  # float64 (LAYERS, 3): per-channel gain (grey photographs are tinted)
    caption: str

    @property
    def num_frames(self) -> int:
        return len(self.screen_to_layer)

    def _queries(self, queries):
        """(query tensor (N, 3) float64, frames (N,), screen_to_layer, shape, present) on the CPU."""
        q = torch.as_tensor(np.asarray(queries, np.float64).reshape(-1, 3))
        frames = q[:, 0].long()
        if len(q) and not (0 <= int(frames.min()) and int(frames.max()) < self.num_frames):
            raise UserError(f"query frames must lie in 0..{self.num_frames - 1}")
        return (q, frames, torch.from_numpy(self.screen_to_layer), torch.from_numpy(self.shape),
                torch.from_numpy(self.present))

    def layer_at(self, queries) -> np.ndarray:
        """(N,) the layer seen at each query point (t, x, y) in pixels: 0 the wall, 1.. a sprite."""
        q, frames, screen_to_layer, shape, present = self._queries(queries)
        return _top_layer(screen_to_layer[frames], shape, present, q[:, 1] / self.size, q[:, 2] / self.size).numpy()

    def track(self, queries) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth of query points (t, x, y) in pixels: tracks float32 (N, T, 2) in pixels, visible bool (N, T).

        A point belongs to the layer seen at its query position; it keeps that layer's coordinates, and it is
        visible where it is inside the frame and the layer seen there is its own."""
        q, frames, screen_to_layer, shape, present = self._queries(queries)
        x, y = q[:, 1] / self.size, q[:, 2] / self.size
        owner = _top_layer(screen_to_layer[frames], shape, present, x, y)
        lx, ly = _apply(screen_to_layer[frames, owner], x, y)
        layer_to_screen = _invert(screen_to_layer)[:, owner].transpose(0, 1)  # (N, T, 2, 3)
        sx, sy = _apply(layer_to_screen, lx[:, None], ly[:, None])
        seen = _top_layer(screen_to_layer[None], shape, present, sx, sy)
        px, py = sx * self.size, sy * self.size
        in_frame = (px >= 0) & (px < self.size) & (py >= 0) & (py < self.size)
        visible = in_frame & (seen == owner[:, None])
        return torch.stack([px, py], -1).float().numpy(), visible.numpy()


def draw_scene(seed: int, bank: PhotoBank, num_frames: int) -> PhotoScene:
    """The scene of clip ``seed`` over ``bank``'s photographs (depends on their sizes and greyness, not pixels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames, dtype=np.float64)
    speed = float(rng.choice(SPEEDS))
    wall = int(rng.integers(len(bank)))

    # The camera: a pan of 0.3-1 token a frame at its fastest (times the speed), mild zoom and roll.
    still = rng.random() < STILL_CAMERA
    log_zoom, tilt = (0.0, 0.0) if still else (rng.uniform(0, MAX_LOG_ZOOM), rng.uniform(0, MAX_TILT))
    zoom = np.exp(_wobble(rng, t, log_zoom, speed))
    roll = _wobble(rng, t, tilt, speed)
    pan = 0.0 if still else rng.uniform(0.3, 1.0) * TOKEN * speed
    # Half the side of the square the view can sweep on the photograph (widest zoom, largest roll), plus EDGE: the
    # camera's centre stays that far from the photograph's edges.
    reach = 0.5 * np.exp(log_zoom) * (np.cos(tilt) + np.sin(tilt)) + EDGE
    extent = bank.extent[wall]
    centre = _bounded_path(rng, t, extent / 2, extent / 2 - reach, pan)
    # view = centre + zoom R(roll) (screen - 0.5)
    linear = _similarity(zoom, roll, np.zeros(2))[..., :2]
    screen_to_wall = np.concatenate([linear, (centre - linear @ np.full(2, 0.5))[..., None]], -1)

    screen_to_layer = np.zeros((num_frames, LAYERS, 2, 3))
    layer_to_texel = np.zeros((LAYERS, 2, 3))
    shape = np.zeros(LAYERS, np.int64)
    present = np.zeros(LAYERS, bool)
    photo = np.zeros(LAYERS, np.int64)
    tint = np.ones((LAYERS, 3))
    screen_to_layer[:, 0] = screen_to_wall
    present[0], photo[0] = True, wall
    others = [k for k in range(len(bank)) if k != wall] or [wall]
    radii, paths = {}, {}
    for layer in range(1, 1 + int(rng.integers(1, MAX_SPRITES + 1))):
        shape[layer] = rng.integers(len(SHAPES))
        photo[layer] = others[rng.integers(len(others))]
        r0 = rng.uniform(0.12, 0.26)
        radius = r0 * np.exp(_wobble(rng, t, rng.uniform(0, 0.15), speed))
        # Screen motion of 0.5-2 tokens a frame at its fastest, around a middle anywhere near the frame's centre,
        # swinging far enough to leave the frame.
        path = _bounded_path(rng, t, rng.uniform(0.25, 0.75, size=2), rng.uniform(0.15, 0.6, size=2),
                             rng.uniform(0.5, 2.0) * TOKEN * speed)
        angle = rng.uniform(-np.pi, np.pi) + rng.uniform(-0.12, 0.12) * speed * t
        # local = R(-angle) (screen - path) / radius
        inverse = _similarity(1 / radius, -angle, np.zeros(2))[..., :2]
        screen_to_layer[:, layer] = np.concatenate([inverse, -(inverse @ path[..., None])], -1)
        # The texture: a crop of another photograph at about the wall's scale, turned at random; of a few, the most
        # detailed (a crop of sky would make a flat sprite, whose inside no one can track).
        half = r0 * rng.uniform(0.6, 1.2)
        margin = half * np.sqrt(2) + EDGE
        crops = [_similarity(half, rng.uniform(-np.pi, np.pi), rng.uniform(margin, bank.extent[photo[layer]] - margin))
                 for _ in range(CROP_CANDIDATES)]
        layer_to_texel[layer] = max(crops, key=lambda crop: bank.detail(photo[layer], crop))
        present[layer] = True
        radii[layer], paths[layer] = r0, path
    for layer in range(LAYERS):
        to_texel = bank.view_to_texel(photo[layer])
        layer_to_texel[layer] = to_texel if layer == 0 else _compose(to_texel, layer_to_texel[layer])
        if present[layer] and bank.grey[photo[layer]]:
            tint[layer] = rng.uniform(0.5, 1.5, size=3)
    words = [f"a photographic {SHAPES[shape[layer]]} moves {direction_word(paths[layer][-1] - paths[layer][0])}"
             for layer in sorted(radii, key=lambda layer: -radii[layer])]
    caption = " and ".join(words) + " over a photographic wall"
    return PhotoScene(seed, bank.size, screen_to_layer, layer_to_texel, shape, present, photo, tint, caption)


def _check_batch(scenes: Sequence[PhotoScene], size: int) -> None:
    if not scenes:
        raise UserError("no scenes to render")
    if any(scene.size != size for scene in scenes):
        raise UserError(f"scenes drawn for another clip size than the bank's {size}")


def _pixel_centres(size: int, device):
    """(x (1, 1, 1, W), y (1, 1, H, 1)): pixel centres in frame units."""
    centres = (torch.arange(size, dtype=torch.float64, device=device) + 0.5) / size
    return centres.view(1, 1, 1, size), centres.view(1, 1, size, 1)


def layer_map(scenes: Sequence[PhotoScene], frames, device="cpu") -> torch.Tensor:
    """int64 (B, F, size, size): the layer each pixel of ``frames`` of every scene shows (0 the wall, 1.. a
    sprite), as :func:`render` draws it."""
    _check_batch(scenes, scenes[0].size if scenes else 0)
    frames = np.asarray(frames)
    screen_to_layer = torch.from_numpy(np.stack([scene.screen_to_layer[frames] for scene in scenes])).to(device)
    shape = torch.from_numpy(np.stack([scene.shape for scene in scenes])).to(device)[:, None, None, None]
    present = torch.from_numpy(np.stack([scene.present for scene in scenes])).to(device)[:, None, None, None]
    x, y = _pixel_centres(scenes[0].size, device)
    return _top_layer(screen_to_layer[:, :, None, None], shape, present, x, y)


def render(scenes: Sequence[PhotoScene], bank: PhotoBank, frames=None) -> torch.Tensor:
    """uint8 (B, F, 3, size, size) on the bank's device: ``frames`` (default all) of every scene."""
    _check_batch(scenes, bank.size)
    frames = np.arange(scenes[0].num_frames) if frames is None else np.asarray(frames)
    device = bank.device
    top = layer_map(scenes, frames, device)  # (B, F, H, W)
    # Straight to grid_sample's coordinates (align_corners=False: the atlas's outer edges at -1 and +1), in float32:
    # a thousandth of a texel is far below what bilinear sampling resolves.
    height, width = bank.atlas.shape[-2:]
    to_grid = np.array([[2 / width, 0, -1], [0, 2 / height, -1]])
    screen_to_grid = _compose(_compose(to_grid, np.stack([scene.layer_to_texel for scene in scenes]))[:, None],
                              np.stack([scene.screen_to_layer[frames] for scene in scenes]))  # (B, F, L, 2, 3)
    screen_to_grid = torch.from_numpy(screen_to_grid).float().to(device)[:, :, None, None]
    x, y = (centres.float() for centres in _pixel_centres(bank.size, device))
    gx, gy = _apply(screen_to_grid[..., 0, :, :], x, y)
    for layer in range(1, LAYERS):
        lx, ly = _apply(screen_to_grid[..., layer, :, :], x, y)
        gx, gy = torch.where(top == layer, lx, gx), torch.where(top == layer, ly, gy)
    grid = torch.stack([gx, gy], -1).reshape(1, -1, bank.size, 2)
    colour = F.grid_sample(bank.atlas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    colour = colour.reshape(3, *top.shape).permute(1, 2, 0, 3, 4)  # (B, F, 3, H, W)
    tints = np.stack([scene.tint for scene in scenes])  # (B, L, 3)
    if (tints != 1).any():
        tint = torch.from_numpy(tints).float().to(device)[:, None, :, :, None, None]  # (B, 1, L, 3, 1, 1)
        gain = torch.ones_like(colour)
        for layer in range(LAYERS):
            gain = torch.where((top == layer)[:, :, None], tint[:, :, layer], gain)
        colour = colour * gain
    return (colour * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def render_video(scene: PhotoScene, bank: PhotoBank) -> np.ndarray:
    """uint8 (T, size, size, 3) RGB: the whole clip, rendered ``RENDER_CHUNK`` frames at a time."""
    chunks = [render([scene], bank, range(start, min(start + RENDER_CHUNK, scene.num_frames)))[0]
              for start in range(0, scene.num_frames, RENDER_CHUNK)]
    return torch.cat(chunks).permute(0, 2, 3, 1).cpu().numpy()


def sample_queries(scene: PhotoScene, num_points: int, rng) -> np.ndarray:
    """(N, 3) query points (t, x, y) in pixels, uniform over frames and pixels, a third of them on sprites (fewer
    only if the sprites are hardly ever in view), in random order; each is visible at its query frame."""
    sprite_quota = num_points // 3 if scene.present[1:].any() else 0
    on_sprite, on_wall = [], []
    for _ in range(64):
        candidates = np.stack([rng.integers(0, scene.num_frames, 4 * num_points),
                               rng.uniform(0, scene.size, 4 * num_points),
                               rng.uniform(0, scene.size, 4 * num_points)], -1)
        layer = scene.layer_at(candidates)
        on_sprite.extend(candidates[layer > 0])
        on_wall.extend(candidates[layer == 0])
        if len(on_sprite) >= sprite_quota and len(on_wall) >= num_points - sprite_quota:
            break
    chosen = on_sprite[:sprite_quota]
    chosen += on_wall[:num_points - len(chosen)]
    return np.stack(chosen)[rng.permutation(len(chosen))]


def tapvid_entry(scene: PhotoScene, bank: PhotoBank, num_points: int) -> dict:
    """A TAP-Vid entry of the scene: 'video' uint8 (T, H, W, 3), 'points' float32 (N, T, 2) normalised (x, y),
    'occluded' bool (N, T). Queries come from a stream of their own, seeded by the clip's seed."""
    queries = sample_queries(scene, num_points, np.random.default_rng([scene.seed, 1]))
    tracks, visible = scene.track(queries)
    return {"video": render_video(scene, bank), "points": (tracks / np.float32(scene.size)).astype(np.float32),
            "occluded": ~visible}


# ----- the frozen held-out sets ---------------------------------------------------------------------------------

FROZEN_SIZE = 256
FROZEN_POINTS = 48
FROZEN_LENGTHS = (24, 64)  # frames of the clips of each set
FROZEN_CLIPS = 8  # clips a set


def frozen_parameters() -> dict:
    """What the frozen held-out sets are, as their manifest states it (without photographs and checksums): clips of
    the held-out photographs, ``FROZEN_CLIPS`` a set, seeds counted up from PHOTO_CLIP_SEED_START."""
    from difftrack.evaluation.seeds import PHOTO_CLIP_SEED_START

    sets, start = {}, PHOTO_CLIP_SEED_START
    for frames in FROZEN_LENGTHS:
        sets[f"frames{frames}"] = {"frames": frames, "seeds": list(range(start, start + FROZEN_CLIPS))}
        start += FROZEN_CLIPS
    return {"split": "heldout", "size": FROZEN_SIZE, "points": FROZEN_POINTS, "sets": sets}


def build_frozen_sets(parameters: dict, photos: Sequence[np.ndarray]) -> tuple[dict, str]:
    """({set: {clip name: TAP-Vid entry}}, the bank's digest): every clip the parameters name, rendered on the CPU
    (the frozen sets are defined by the CPU's bits)."""
    bank = PhotoBank(photos, parameters["size"], "cpu")
    sets = {name: {clip_name(seed): tapvid_entry(draw_scene(seed, bank, spec["frames"]), bank, parameters["points"])
                   for seed in spec["seeds"]}
            for name, spec in parameters["sets"].items()}
    return sets, bank.digest()


def clip_name(seed: int) -> str:
    """The name of clip ``seed`` in a frozen set's TAP-Vid pickle."""
    return f"photo_{seed}"


def clip_seed(name: str) -> int:
    """The seed of the frozen photo clip called ``name`` (:func:`clip_name`)."""
    digits = name.removeprefix("photo_")
    if digits == name or not digits.isdigit():
        raise UserError(f"{name!r} is not the name of a frozen photo clip (photo_<seed>)")
    return int(digits)


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()


def set_digests(sets: dict) -> dict:
    """{set: {clip: {field: SHA-256}}} of built sets."""
    return {name: {clip: {field: array_digest(value) for field, value in entry.items()}
                   for clip, entry in clips.items()}
            for name, clips in sets.items()}


def check_frozen_sets(manifest: dict, photo_checksums: dict, sets: dict, bank_digest: str) -> None:
    """Raise a one-line UserError naming the first thing that differs from ``manifest``: the photographs, their
    resampling, or a clip's arrays."""
    if list(manifest["photos"].items()) != list(photo_checksums.items()):
        raise UserError(f"the photographs of the {manifest['split']} split (difftrack/data/photo_corpus.json) are not "
                        f"the ones the manifest lists; the frozen clips are made from the manifest's")
    if manifest["photo_bank_sha256"] != bank_digest:
        raise UserError(f"resampling the photographs gave other bits than the manifest's (SHA-256 {bank_digest}, "
                        f"expected {manifest['photo_bank_sha256']}): this torch resamples differently, so the clips "
                        f"cannot be rebuilt bit-identically here")
    built = set_digests(sets)
    for name, spec in manifest["sets"].items():
        for clip, fields in spec["clips"].items():
            for field, digest in fields.items():
                got = built.get(name, {}).get(clip, {}).get(field)
                if got != digest:
                    raise UserError(f"frozen photo clip {name}/{clip} differs from the manifest: its {field!r} has "
                                    f"SHA-256 {got}, expected {digest}")


def read_manifest(path) -> dict:
    """The frozen sets' manifest at ``path``, with a one-line error if it cannot be read or lacks a field."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"the manifest {path} is not valid JSON ({exc})") from None
    required = {"split", "size", "points", "photos", "photo_bank_sha256", "sets"}
    missing = required - set(manifest) if isinstance(manifest, dict) else required
    if missing:
        raise UserError(f"the manifest {path} lacks {', '.join(sorted(missing))}; write it anew with --new-manifest")
    return manifest


def make_frozen_sets(out, manifest_path, command: str, new_manifest: bool = False, parameters: dict | None = None,
                     photos: dict | None = None, checksums: dict | None = None) -> list[str]:
    """Build the frozen sets, check them against the manifest at ``manifest_path`` (or, with ``new_manifest``, write
    that manifest from ``parameters``, default :func:`frozen_parameters`, naming ``command`` as the way to rebuild),
    and only then write ``out``/<set>/tapvid_davis.pkl (TAP-Vid's DAVIS layout). ``photos`` and ``checksums``
    ({key: uint8 photograph} and {key: SHA-256}) default to the split's own (fetched and cached on first use).
    Returns what was done, a line each."""
    from pathlib import Path

    from difftrack.data.clips import save_tapvid
    from difftrack.data.photos import load_photos, photo_checksums
    from difftrack.io import write_json

    if not new_manifest:
        parameters = read_manifest(manifest_path)
    elif parameters is None:
        parameters = frozen_parameters()
    checksums = photo_checksums(parameters["split"]) if checksums is None else checksums
    photos = load_photos(parameters["split"]) if photos is None else photos
    sets, bank_digest = build_frozen_sets(parameters, list(photos.values()))
    done = []
    if new_manifest:
        digests = set_digests(sets)
        write_json(manifest_path, {
            "about": "Frozen held-out photo clips (difftrack.data.photo_clips); rebuild and verify with the command "
                     "below. Clip arrays are hashed with difftrack.data.photo_clips.array_digest.",
            "command": command, "split": parameters["split"], "size": parameters["size"],
            "points": parameters["points"], "photos": checksums, "photo_bank_sha256": bank_digest,
            "sets": {name: {**spec, "clips": digests[name]} for name, spec in parameters["sets"].items()}})
        done.append(f"wrote {manifest_path}")
    else:
        check_frozen_sets(parameters, checksums, sets, bank_digest)
        done.append(f"every clip matches {manifest_path}")
    for name, clips in sets.items():
        target = Path(out) / name / "tapvid_davis.pkl"
        save_tapvid(target, clips)
        done.append(f"{name}: {len(clips)} clips of {parameters['sets'][name]['frames']} frames -> {target}")
    return done
