"""research.detection.anchors: counts, order and values against torchvision's generators."""

import numpy as np
import pytest

from research.detection import anchors as A


def test_base_anchors_hand_values_and_counts():
    base = A.base_anchors((32,), (0.5, 1.0, 2.0))
    # ratio = h / w; area 32^2; rounded: w = 32 sqrt(2) = 45.25 -> half-width 22.63 -> 23.
    np.testing.assert_array_equal(base, [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    assert A.num_anchors_per_location((128, 256, 512), (0.5, 1, 2)) == 9  # Faster R-CNN's k = 9
    a = A.grid_anchors((5, 7), (80, 112), (128, 256, 512), (0.5, 1.0, 2.0))
    assert a.shape == (5 * 7 * 9, 4) and a.dtype == np.float32
    # Location-major order: anchors 9..17 are those of cell (0, 1), shifted by the stride 16 in x.
    np.testing.assert_array_equal(a[9:18] - a[:9], np.tile([[16, 0, 16, 0]], (9, 1)))
    np.testing.assert_array_equal(a[7 * 9 : 8 * 9] - a[:9], np.tile([[0, 16, 0, 16]], (9, 1)))


def _torchvision_anchors(sizes, ratios, image_size, feature_sizes):
    torch = pytest.importorskip('torch')
    pytest.importorskip('torchvision')
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    gen = AnchorGenerator(sizes, ratios)
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    feats = [torch.zeros(1, 8, *f) for f in feature_sizes]
    return gen(images, feats)[0].numpy(), gen.num_anchors_per_location()


def test_single_level_equals_torchvision():
    sizes, ratios = ((128, 256, 512),), ((0.5, 1.0, 2.0),)
    want, k = _torchvision_anchors(sizes, ratios, (96, 128), [(6, 8)])
    got = A.multilevel_anchors([(6, 8)], (96, 128), sizes, ratios)
    assert k == [9] and got.shape == (6 * 8 * 9, 4)
    np.testing.assert_array_equal(got, want)


def test_fpn_levels_equal_torchvision():
    image = (128, 160)
    feats = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]  # P2-P6 (P6 by ceil, stride 128 // 2 = 64)
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    want, k = _torchvision_anchors(sizes, ratios, image, feats)
    got = A.multilevel_anchors(feats, image)  # the defaults are torchvision's FPN anchors
    assert got.shape == (sum(h * w for h, w in feats) * 3, 4) and k == [3] * 5
    np.testing.assert_array_equal(got, want)
    # Several sizes per level and odd ratios.
    sizes2, ratios2 = ((16, 24), (48, 96)), ((0.25, 1.0, 3.0), (1.0,))
    want, _ = _torchvision_anchors(sizes2, ratios2, (64, 64), [(16, 16), (8, 8)])
    np.testing.assert_array_equal(A.multilevel_anchors([(16, 16), (8, 8)], (64, 64), sizes2, ratios2), want)


def test_ssd_default_boxes_equal_torchvision():
    torch = pytest.importorskip('torch')
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    ratios = [[2], [2, 3], [2, 3], [2]]
    feats = [(19, 19), (10, 10), (5, 5), (3, 3)]
    for steps in (None, [16, 30, 60, 100]):
        gen = DefaultBoxGenerator(ratios, steps=steps)
        images = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
        want = gen(images, [torch.zeros(1, 4, *f) for f in feats])[0].numpy()
        got = A.default_boxes(feats, (300, 300), ratios, steps=steps)
        assert (
            got.shape == want.shape == (sum(h * w * (2 + 2 * len(r)) for (h, w), r in zip(feats, ratios)), 4)
        )
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
