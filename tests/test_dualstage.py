"""dualstage: the morphological rain mask, shapes, the tiling declaration, shipped weights."""
import numpy as np
import pytest
import torch

from derain_cli.models import dualstage
from derain_cli.models.common import box_extreme, shifted_extreme
from derain_cli.registry import get_spec

TINY = dict(channels=4, stage1_width=8, stage1_blocks=1, dim=16, depth=2, heads=1, window=4, clusters=2,
            kmeans_iters=2, fullres_blocks=1, fullres_width=4)


def _streaks_and_edge(size=64, contrast=0.3):
    """A grey image with thin slanted bright streaks on its left half, and one with a plain step edge."""
    base = np.full((size, size), 0.4, np.float32)
    streaks = base.copy()
    for x0 in range(4, size // 2, 8):
        for t in range(20):
            y, x = 20 + t, x0 + t // 5
            streaks[y, x] += contrast
    edge = base.copy()
    edge[:, size // 2:] += contrast
    to_t = lambda a: torch.from_numpy(np.repeat(a[None, None], 3, 1))  # noqa: E731
    return to_t(streaks), to_t(edge)


def test_mask_fires_on_streaks_not_on_an_edge_of_the_same_contrast():
    streaks, edge = _streaks_and_edge()
    m_streak = dualstage.rain_mask(streaks)
    m_edge = dualstage.rain_mask(edge)
    assert m_streak.max() > 0.9
    assert m_edge.max() < 0.1
    # The response sits on the streaks, not spread over the image.
    assert m_streak[..., :, 40:].max() < 0.1


def test_mask_ignores_isolated_dots():
    img = torch.full((1, 3, 32, 32), 0.4)
    img[..., 10, 10] += 0.3
    img[..., 20, 25] += 0.3
    assert dualstage.rain_mask(img).max() < 0.1


@pytest.mark.parametrize("angle", [60.0, 90.0, 105.0])
def test_line_erosion_and_dilation_equal_shifting_one_offset_at_a_time(angle):
    x = torch.rand(2, 1, 23, 31)
    offs = dualstage.line_offsets(7, angle)

    def shifted(dy, dx):  # the reference: pad by this offset alone, with replicated borders
        p = max(abs(dy), abs(dx), 1)
        xp = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
        return xp[..., p + dy:p + dy + 23, p + dx:p + dx + 31]

    views = torch.stack([shifted(dy, dx) for dy, dx in offs])
    assert torch.equal(shifted_extreme(x, offs, torch.minimum), views.amin(0))
    assert torch.equal(shifted_extreme(x, offs, torch.maximum), views.amax(0))
    assert torch.equal(shifted_extreme(x, [(0, 0)], torch.minimum), x)


@pytest.mark.parametrize("h,w", [(17, 9), (33, 70), (5, 5), (64, 48)])
def test_any_size_comes_out_the_same_size(h, w):
    spec = get_spec("dualstage")
    net = spec.build(spec.config(**TINY)).eval()
    with torch.inference_mode():
        coarse, final = net.forward_stages(torch.rand(1, 3, h, w))
    assert coarse.shape == final.shape == (1, 3, h, w)


def test_cluster_order_is_a_permutation_grouping_similar_tokens():
    t = torch.cat([torch.randn(1, 10, 4) * 0.01 + 1, torch.randn(1, 10, 4) * 0.01 - 1], 1)[:, torch.randperm(20)]
    order = dualstage.kmeans_order(t, k=2, iters=3)
    assert sorted(order[0].tolist()) == list(range(20))
    signs = torch.sign(t[0, order[0], 0])
    assert (signs[:10] == signs[0]).all() and (signs[10:] == signs[10]).all()


def test_spec_declares_tiling_unsafe_with_a_large_minimum_tile():
    # Cluster attention sees the whole tile, so tiles change the result: the spec says so.
    spec = get_spec("dualstage")
    assert spec.tile_safe is False and spec.min_tile >= 256
    assert set(spec.presets) >= {"cpu", "paper"}


def test_stages_are_both_supervised_and_a_step_runs():
    spec = get_spec("dualstage")
    recipe = spec.recipe(spec, spec.config(**TINY), "paired")
    recipe.setup(10)
    batch = {"rainy": torch.rand(2, 3, 32, 32), "clean": torch.rand(2, 3, 32, 32)}
    terms = recipe.train_step(batch, 0)
    assert {"coarse", "final"} <= set(terms)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in terms.values())


def test_shipped_weights_raise_psnr_on_bundled_crops():
    from shipped import psnr_gain_on_crops

    before, after = psnr_gain_on_crops("dualstage")
    assert after > before + 0.3, (before, after)


@pytest.mark.parametrize("size", [2, 3, 5, 7])
def test_box_extreme_equals_stride_one_pooling(size):
    x = torch.rand(2, 3, 19, 26)
    assert torch.equal(box_extreme(x, size, torch.maximum), torch.nn.functional.max_pool2d(x, size, stride=1))
    assert torch.equal(box_extreme(x, size, torch.minimum), -torch.nn.functional.max_pool2d(-x, size, stride=1))


def test_unshuffle_conv_and_pool2_equal_the_layers_they_replace():
    torch.manual_seed(0)
    fast = dualstage.UnshuffleConv(4, 3, 5)
    x = torch.rand(2, 3, 16, 24)
    reference = fast[1](torch.nn.functional.pixel_unshuffle(x, 4))  # the Sequential's own layers
    assert torch.allclose(fast(x), reference, atol=1e-5)
    assert sorted(fast.state_dict()) == ["1.bias", "1.weight"]  # the old file layout
    m = torch.rand(1, 1, 13, 10)
    assert torch.equal(dualstage.max_pool2(m), torch.nn.functional.max_pool2d(m, 2))
