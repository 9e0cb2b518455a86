"""Image-level views: DINO's multi-crop augmentation, batched on the device, with crop boxes kept.

Known (GLARE Figure 1): two views X and X' of each image by image-level augmentation; each goes through the
student and the teacher. Design (``glare-method.md`` section 2, "Views"; DINO's ``DataAugmentationDINO``):

1. random resized crop (area scale 0.4-1, aspect ratio 3/4-4/3) to S x S, horizontal flip p 0.5;
2. colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8, grayscale p 0.2;
3. Gaussian blur (sigma 0.1-2) with p 1.0 on view 1 and 0.1 on view 2; solarisation p 0.2 on view 2;
4. optional local crops (``n_local``, 96 px, scale 0.05-0.4, blur p 0.5).

Everything runs as batched tensor operations on the images' device: crop + flip + resize of the whole batch is
one ``F.grid_sample`` call per view size, and every colour operation draws per-sample parameters and applies
them to the whole batch at once (no per-image Python loop, no PIL). Two small deviations from torchvision
(Design): the four colour-jitter operations are applied in one random order per batch (torchvision draws one
per image), and the crop is bilinear after one antialiased pre-resize of the batch (torchvision resizes each
crop with antialiasing).

Each view keeps its crop box ``(x0, y0, x1, y1)`` in normalised [0, 1] coordinates of the source image and its
flip, so that patch cells of one view can be located in the source image and in the other view (geometric
correspondence for the regional term's ablation and the cross-view local variant). Coordinates follow
``align_corners=False``: pixel i of a W-wide image covers [i/W, (i+1)/W] and its centre is at (i + 0.5)/W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class ViewConfig:
    """Multi-crop augmentation settings (defaults: DINO's recipe).

    Attributes:
        global_size: side S of the global views in pixels; a multiple of the patch size (224 for /16 bases;
            224 or 168 for /14 bases: the caller sets it).
        global_scale: range of the crop's area as a fraction of the image (0.4, 1.0).
        ratio: range of the crop's aspect ratio w/h, sampled log-uniformly (3/4, 4/3).
        flip_p: probability of a horizontal flip (0.5).
        jitter_p: probability of colour jitter (0.8).
        brightness, contrast, saturation, hue: colour-jitter strengths (0.4, 0.4, 0.2, 0.1).
        grayscale_p: probability of grayscale conversion (0.2).
        blur_p: probability of Gaussian blur for view 1 and view 2 (1.0, 0.1).
        blur_sigma: range of the blur's sigma in output pixels (0.1, 2.0).
        solarize_p: probability of solarisation for view 1 and view 2 (0.0, 0.2).
        n_local: number of local crops per image (0: none, DINO's default for GLARE's two-view setting).
        local_size: side of the local crops (96; must be a multiple of the patch size, e.g. 98 for /14).
        local_scale: area range of the local crops (0.05, 0.4).
        local_blur_p: blur probability of the local crops (0.5).
        antialias: first shrink the batch (antialiased) so that no crop is downsampled by more than ~1x at its
            smallest scale, then crop bilinearly.
    """

    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    n_local: int = 0
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_blur_p: float = 0.5
    antialias: bool = True


@dataclass
class Views:
    """The augmented views of a batch.

    Attributes:
        globals: two (B, 3, S, S) tensors in [0, 1].
        boxes: (2, B, 4) crop boxes (x0, y0, x1, y1) of the global views, normalised to the source image.
        flips: (2, B) bool, True where the view is mirrored horizontally.
        locals: ``n_local`` (B, 3, s, s) tensors.
        local_boxes: (n_local, B, 4); local_flips: (n_local, B).
    """

    globals: list[torch.Tensor]
    boxes: torch.Tensor
    flips: torch.Tensor
    locals: list[torch.Tensor] = field(default_factory=list)
    local_boxes: torch.Tensor | None = None
    local_flips: torch.Tensor | None = None

    def crop(self, i: int) -> Crop:
        """Where global view ``i`` (0 or 1) was cut from the source images."""
        return Crop(self.boxes[i], self.flips[i])


@dataclass(frozen=True)
class Crop:
    """Where a batch of views was cut from its source images, for moving points between view and source.

    Attributes:
        boxes: (B, 4) crop boxes (x0, y0, x1, y1), normalised to the source image.
        flips: (B,) bool, True where the view is mirrored horizontally.
    """

    boxes: torch.Tensor
    flips: torch.Tensor

    def float(self) -> Crop:
        """The same crop with float32 boxes (for geometry under autocast)."""
        return Crop(self.boxes.float(), self.flips)

    def to_source(self, points: torch.Tensor) -> torch.Tensor:
        """(B, P, 2) points (x, y) in the view's [0, 1] coordinates -> the source image's (B, P, 2)."""
        return view_to_source(points, self.boxes, self.flips)

    def from_source(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, 2) source points -> view points and (B, P) bool inside the view (:func:`source_to_view`)."""
        return source_to_view(points, self.boxes, self.flips)


# ------------------------------------------------------------------------------------------------ randomness
def _rand(shape, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device (CPU when there is none)."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=device)


def _uniform(shape, low: float, high: float, generator, device) -> torch.Tensor:
    return (low + (high - low) * _rand(shape, generator)).to(device)


def _bernoulli(shape, p: float, generator, device) -> torch.Tensor:
    return (_rand(shape, generator) < p).to(device)


# ------------------------------------------------------------------------------------------------ geometry
def sample_boxes(
    batch: int,
    image_size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Random-resized-crop boxes, torchvision's rule vectorised over the batch.

    Up to ``attempts`` (area, log-ratio) draws per image; the first that fits is used; if none fits, the
    central crop with the ratio clamped to ``ratio`` (torchvision's fallback).

    Returns:
        (B, 4) boxes (x0, y0, x1, y1) normalised to [0, 1], on the CPU (or the generator's device).
    """
    H, W = image_size
    area = H * W * (scale[0] + (scale[1] - scale[0]) * _rand((batch, attempts), generator))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(
        (batch, attempts), generator
    )
    r = torch.exp(log_r)
    w, h = torch.sqrt(area * r), torch.sqrt(area / r)
    ok = (w <= W) & (h <= H) & (w > 0) & (h > 0)
    first = torch.argmax(ok.int(), dim=1)  # first fitting attempt (0 when none fits)
    any_ok = ok.any(dim=1)
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = float(W), W / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = H * ratio[1], float(H)
    else:
        fw, fh = float(W), float(H)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = _rand((batch, 2), generator)
    x0 = torch.where(any_ok, u[:, 0] * (W - w), (W - w) / 2)
    y0 = torch.where(any_ok, u[:, 1] * (H - h), (H - h) / 2)
    return torch.stack([x0 / W, y0 / H, (x0 + w) / W, (y0 + h) / H], dim=1)


def box_to_grid_coords(boxes: torch.Tensor, flips: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The ``F.grid_sample`` grid that crops ``boxes``, mirrors ``flips`` and resizes to ``size``.

    Output pixel (i, j) of an (h, w) view has view coordinates u = (j + 0.5)/w, v = (i + 0.5)/h; after the
    flip (u -> 1 - u) it sits at source coordinates x = x0 + u (x1 - x0), y = y0 + v (y1 - y0), returned in
    grid_sample's [-1, 1] convention (``align_corners=False``).

    Args:
        boxes: (B, 4) normalised (x0, y0, x1, y1).
        flips: (B,) bool.
        size: (h, w) of the output.

    Returns:
        (B, h, w, 2) grid of (x, y) in [-1, 1].
    """
    h, w = size
    dev, dt = boxes.device, boxes.dtype
    u = (torch.arange(w, device=dev, dtype=dt) + 0.5) / w
    v = (torch.arange(h, device=dev, dtype=dt) + 0.5) / h
    pts = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1).reshape(1, h * w, 2)
    src = view_to_source(pts.expand(boxes.shape[0], -1, -1), boxes, flips)
    return (src * 2 - 1).reshape(-1, h, w, 2)


def view_to_source(points: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Map (B, P, 2) points (x, y) in a view's [0, 1] coordinates to the source image's [0, 1] coordinates."""
    x, y = points.unbind(-1)
    x = torch.where(flips[:, None], 1 - x, x)
    x0, y0, x1, y1 = (c[:, None] for c in boxes.unbind(-1))
    return torch.stack([x0 + x * (x1 - x0), y0 + y * (y1 - y0)], dim=-1)


def source_to_view(
    points: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`view_to_source`.

    Returns:
        (B, P, 2) view coordinates and a (B, P) bool mask of the points that fall inside the view.
    """
    x, y = points.unbind(-1)
    x0, y0, x1, y1 = (c[:, None] for c in boxes.unbind(-1))
    x = (x - x0) / (x1 - x0)
    y = (y - y0) / (y1 - y0)
    x = torch.where(flips[:, None], 1 - x, x)
    inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    return torch.stack([x, y], dim=-1), inside


def cell_centres(grid: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(N, 2) centres (x, y) of the patch cells of an (h, w) grid in [0, 1] view coordinates, row-major."""
    h, w = grid
    u = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    v = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1).reshape(h * w, 2)


def map_points(points: torch.Tensor, src: Crop, dst: Crop) -> tuple[torch.Tensor, torch.Tensor]:
    """Move (B, P, 2) points (x, y) of view ``src`` into view ``dst`` through the source image.

    Returns:
        points (B, P, 2) in ``dst``'s [0, 1] coordinates and inside (B, P) bool (the point lies in ``dst``).
    """
    return dst.from_source(src.to_source(points))


def map_cells_between_views(grid: tuple[int, int], src: Crop, dst: Crop) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each patch cell of view ``src`` lands in view ``dst`` (through the source image).

    Args:
        grid: (h, w) patch grid of view ``src``.
        src, dst: the two views' crops (boxes (B, 4), flips (B,)).

    Returns:
        points (B, N, 2) in ``dst``'s [0, 1] coordinates, and inside (B, N) bool (the cell's centre is in
        ``dst``).
    """
    boxes = src.boxes
    pts = cell_centres(grid, boxes.device, boxes.dtype).expand(boxes.shape[0], -1, -1)
    return map_points(pts, src, dst)


def sample_at(feature_map: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a (B, D, h, w) map at (B, P, 2) view coordinates in [0, 1] -> (B, P, D)."""
    grid = (points * 2 - 1).to(feature_map.dtype)[:, :, None, :]  # (B, P, 1, 2)
    out = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int, antialias: bool = True
) -> torch.Tensor:
    """Crop ``boxes``, mirror ``flips`` and resize to size x size, for the whole batch in one ``grid_sample``.

    Args:
        images: (B, 3, H, W) float.
        boxes: (B, 4) normalised boxes; flips: (B,) bool.
        size: output side.
        antialias: first shrink the batch (antialiased) so that the smallest crop maps to about ``size``
            pixels.

    Returns:
        (B, 3, size, size).
    """
    H, W = images.shape[-2:]
    if antialias:
        min_h = float((boxes[:, 3] - boxes[:, 1]).min())
        min_w = float((boxes[:, 2] - boxes[:, 0]).min())
        factor = max(size / (min_h * H), size / (min_w * W))
        if factor < 1:
            new = (max(1, round(H * factor)), max(1, round(W * factor)))
            images = F.interpolate(images, size=new, mode="bilinear", align_corners=False, antialias=True)
    grid = box_to_grid_coords(boxes.to(images.dtype), flips, (size, size))
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------------------------------------ colour
def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (torchvision's weights); (B, 3, H, W) -> (B, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).to(x.dtype)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB with the closed form ``c_n = v - v s clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6``,
    n = 5, 3, 1 for r, g, b (elementwise; no (B, 3, 6, H, W) intermediate)."""
    h, s, v = (c.unsqueeze(1) for c in x.unbind(1))
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    order: list[int] | None = None,
) -> torch.Tensor:
    """torchvision's colour jitter with per-sample factors, batched.

    Args:
        x: (B, 3, H, W) in [0, 1].
        brightness, contrast, saturation: (B,) multiplicative factors (1 = unchanged).
        hue: (B,) hue shift in [-0.5, 0.5] (0 = unchanged).
        order: order of the four operations (0 brightness, 1 contrast, 2 saturation, 3 hue).

    Returns:
        (B, 3, H, W) in [0, 1]; samples with identity factors come out unchanged.
    """
    view = lambda f: f.to(x.dtype).view(-1, 1, 1, 1)
    for op in order or [0, 1, 2, 3]:
        if op == 0:
            x = (x * view(brightness)).clamp(0, 1)
        elif op == 1:
            mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
            c = view(contrast)
            x = (c * x + (1 - c) * mean).clamp(0, 1)
        elif op == 2:
            s = view(saturation)
            x = (s * x + (1 - s) * rgb_to_gray(x)).clamp(0, 1)
        elif op == 3:
            shift = hue != 0
            if bool(shift.any()):
                hsv = _rgb_to_hsv(x.float())
                hsv[:, 0] = torch.remainder(hsv[:, 0] + hue.float().view(-1, 1, 1), 1.0)
                x = torch.where(view(shift).bool(), _hsv_to_rgb(hsv).to(x.dtype), x)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor | None = None) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, as two grouped convolutions over the batch.

    Args:
        x: (B, C, H, W).
        sigma: (B,) standard deviations in pixels.
        apply: (B,) bool; samples where False get a unit impulse kernel and come out bit-identical.

    Returns:
        (B, C, H, W).
    """
    B, C, H, W = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    radius = min(radius, (min(H, W) - 1) // 2) or 1
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None] / sigma.float().clamp(min=1e-3)[:, None]) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (B, 2r+1)
    if apply is not None:
        impulse = (t == 0).float().expand_as(k)
        k = torch.where(apply[:, None], k, impulse)
    k = k.to(x.dtype).repeat_interleave(C, dim=0)  # (B*C, 2r+1)
    y = x.reshape(1, B * C, H, W)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=B * C)
    y = F.conv2d(y, k[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels >= threshold where ``apply`` (B,) is True (PIL's ``ImageOps.solarize(img, 128)``)."""
    out = torch.where(x >= threshold, 1 - x, x)
    return torch.where(apply.view(-1, 1, 1, 1), out, x)


def photometric(
    x: torch.Tensor,
    cfg: ViewConfig,
    blur_p: float,
    solarize_p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Colour jitter (p ``jitter_p``), grayscale, Gaussian blur (p ``blur_p``), solarisation; per sample."""
    B, dev = x.shape[0], x.device
    jit = _bernoulli(B, cfg.jitter_p, generator, dev)
    one = torch.ones(B, device=dev)

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(B, max(0.0, 1 - strength), 1 + strength, generator, dev)
        return torch.where(jit, f, one)

    b, c, s = factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation)
    h = torch.where(jit, _uniform(B, -cfg.hue, cfg.hue, generator, dev), torch.zeros(B, device=dev))
    order = torch.randperm(4, generator=generator, device=generator.device if generator else "cpu").tolist()
    x = color_jitter(x, b, c, s, h, order)
    gray = _bernoulli(B, cfg.grayscale_p, generator, dev)
    x = torch.where(gray.view(-1, 1, 1, 1), rgb_to_gray(x).expand_as(x), x)
    if blur_p > 0:
        sigma = _uniform(B, cfg.blur_sigma[0], cfg.blur_sigma[1], generator, dev)
        x = gaussian_blur(x, sigma, _bernoulli(B, blur_p, generator, dev))
    if solarize_p > 0:
        x = solarize(x, _bernoulli(B, solarize_p, generator, dev))
    return x


# ------------------------------------------------------------------------------------------------ views
def make_views(
    images: torch.Tensor, cfg: ViewConfig | None = None, generator: torch.Generator | None = None
) -> Views:
    """Two global views (and ``cfg.n_local`` local crops) of every image, batched on ``images.device``.

    Args:
        images: (B, 3, H, W) float in [0, 1] (uint8 is converted).
        cfg: augmentation settings (default :class:`ViewConfig`).
        generator: a ``torch.Generator`` (on the CPU or the images' device) for reproducible views.

    Returns:
        :class:`Views` with ``globals`` [(B, 3, S, S)] * 2, ``boxes`` (2, B, 4), ``flips`` (2, B) and the
        locals.
    """
    cfg = cfg or ViewConfig()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"make_views expects (B, 3, H, W) images, got {tuple(images.shape)}")
    if not images.is_floating_point():
        images = images.float() / 255.0
    B, dev = images.shape[0], images.device
    size = tuple(images.shape[-2:])

    def crops(n: int, scale, out: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        boxes = torch.stack([sample_boxes(B, size, scale, cfg.ratio, generator) for _ in range(n)]).to(dev)
        flips = _bernoulli((n, B), cfg.flip_p, generator, dev)
        flat = crop_resize(
            images.repeat(n, 1, 1, 1), boxes.flatten(0, 1), flips.flatten(), out, cfg.antialias
        )
        return list(flat.split(B)), boxes, flips

    globals_, boxes, flips = crops(2, cfg.global_scale, cfg.global_size)
    globals_ = [
        photometric(v, cfg, cfg.blur_p[i], cfg.solarize_p[i], generator).clamp(0, 1)
        for i, v in enumerate(globals_)
    ]
    views = Views(globals=globals_, boxes=boxes, flips=flips)
    if cfg.n_local > 0:
        locals_, lboxes, lflips = crops(cfg.n_local, cfg.local_scale, cfg.local_size)
        flat = photometric(torch.cat(locals_), cfg, cfg.local_blur_p, 0.0, generator).clamp(0, 1)
        views.locals, views.local_boxes, views.local_flips = list(flat.split(B)), lboxes, lflips
    return views
