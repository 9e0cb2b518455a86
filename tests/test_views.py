"""Views: shapes, and crop boxes / flips that agree with the pixels."""

import torch

from glare_core.views import Crop, ViewConfig, make_views, map_cells_between_views, map_points

NO_COLOUR = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0), antialias=False)


def coordinate_image(B=3, H=120, W=160):
    """Channel 0 = x, channel 1 = y of each pixel centre in [0, 1] coordinates (linear ramps)."""
    x = (torch.arange(W) + 0.5) / W
    y = (torch.arange(H) + 0.5) / H
    img = torch.stack([x.expand(H, W), y[:, None].expand(H, W), torch.zeros(H, W)])
    return img.expand(B, -1, -1, -1).clone()


def test_shapes_and_range():
    g = torch.Generator().manual_seed(0)
    v = make_views(torch.rand(4, 3, 90, 120), ViewConfig(global_size=48, n_local=2, local_size=32), g)
    assert [t.shape for t in v.globals] == [(4, 3, 48, 48)] * 2
    assert [t.shape for t in v.locals] == [(4, 3, 32, 32)] * 2
    assert v.boxes.shape == (2, 4, 4) and v.flips.shape == (2, 4) and v.local_boxes.shape == (2, 4, 4)
    for t in v.globals + v.locals:
        assert t.min() >= 0 and t.max() <= 1
    area = (v.boxes[..., 2] - v.boxes[..., 0]) * (v.boxes[..., 3] - v.boxes[..., 1])
    assert (area >= 0.4 - 1e-4).all() and (area <= 1 + 1e-4).all()
    assert (v.boxes >= 0).all() and (v.boxes <= 1).all()


def test_boxes_and_flips_match_pixels():
    g = torch.Generator().manual_seed(1)
    img = coordinate_image(B=16)
    S = 32
    v = make_views(img, ViewConfig(global_size=S, **NO_COLOUR), g)
    assert v.flips.any() and not v.flips.all()
    centres = (torch.arange(S) + 0.5) / S
    pts = (
        torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).reshape(1, -1, 2).expand(16, -1, -1)
    )
    for i in range(2):
        expected = v.crop(i).to_source(pts)  # (B, S*S, 2) source coordinates
        got = v.globals[i][:, :2].flatten(2).transpose(1, 2)
        assert torch.allclose(got, expected, atol=2e-3)


def test_cells_map_between_views():
    g = torch.Generator().manual_seed(2)
    img = coordinate_image(B=8)
    v = make_views(img, ViewConfig(global_size=64, **NO_COLOUR), g)
    # a 16-px patch cell's mean colour is its centre's source coordinate (linear ramp)
    cells = [
        x[:, :2].unfold(2, 16, 16).unfold(3, 16, 16).mean((-1, -2)).flatten(2).transpose(1, 2)
        for x in v.globals
    ]
    points, inside = map_cells_between_views((4, 4), v.crop(0), v.crop(1))
    # the source coordinate of a cell of view 0 equals the source coordinate at its mapped point in view 1
    src_from_view1 = v.crop(1).to_source(points)
    assert torch.allclose(src_from_view1, cells[0], atol=3e-3)
    assert inside.any()
    assert ((points[inside] >= 0) & (points[inside] <= 1)).all()


def test_photometric_changes_colours_and_is_reproducible():
    x = torch.rand(4, 3, 64, 64)
    a = make_views(x, ViewConfig(global_size=32), torch.Generator().manual_seed(5))
    b = make_views(x, ViewConfig(global_size=32), torch.Generator().manual_seed(5))
    plain = make_views(x, ViewConfig(global_size=32, **NO_COLOUR), torch.Generator().manual_seed(5))
    assert torch.equal(a.globals[0], b.globals[0]) and torch.equal(a.boxes, b.boxes)
    assert not torch.allclose(a.globals[0], plain.globals[0])


def test_colour_ops_match_torchvision():
    TF = __import__("pytest").importorskip("torchvision.transforms.functional")
    from glare_core.views import color_jitter, gaussian_blur

    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 3, 24, 28, generator=g)
    hue = torch.tensor([-0.1, 0.05, 0.0])
    got = color_jitter(
        x, torch.tensor([1.3, 0.8, 1.0]), torch.tensor([0.7, 1.2, 1.0]), torch.ones(3), hue, [0, 1, 3]
    )
    for i in range(3):
        ref = TF.adjust_contrast(TF.adjust_brightness(x[i], [1.3, 0.8, 1.0][i]), [0.7, 1.2, 1.0][i])
        ref = TF.adjust_hue(ref, float(hue[i]))
        assert torch.allclose(got[i], ref, atol=1e-4)
    blurred = gaussian_blur(x, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([True, True, False]))
    assert torch.allclose(blurred[0], TF.gaussian_blur(x[0], [7, 7], [1.0, 1.0]), atol=1e-5)
    assert torch.equal(blurred[2], x[2])  # not selected: bit-identical


def test_map_points_round_trips_through_the_source_image():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 0.5, 0.5]])
    a = Crop(boxes, torch.tensor([True, False]))
    b = Crop(boxes.flip(0), torch.tensor([False, True]))
    pts = torch.rand(2, 5, 2, generator=g)
    there, _ = map_points(pts, a, b)
    back, inside = map_points(there, b, a)
    assert torch.allclose(back, pts, atol=1e-6)
    assert inside.all()
    assert torch.equal(map_points(pts, a, a)[1], torch.ones(2, 5, dtype=torch.bool))
