"""semimsn: the matching loss, shapes, tiling, shipped weights."""
import pytest
import torch

from derain_cli.models.semimsn import matching_loss
from derain_cli.registry import get_spec

TINY = dict(channels=4, units=1, cclb_depth=1, fullres_blocks=1, fullres_width=4)


def test_matching_loss_is_zero_for_identical_batches():
    f = torch.randn(4, 8, 6, 6)
    assert matching_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_matching_loss_grows_with_a_shift_and_a_rescale():
    f = torch.randn(4, 8, 6, 6)
    small = matching_loss(f, f + 0.1).item()
    large = matching_loss(f, f + 1.0).item()
    scaled = matching_loss(f, f * 2).item()
    assert 0 < small < large
    assert scaled > 0.1  # covariance term sees a change of spread with the same mean


def test_matching_loss_gradient_flows():
    fs = torch.randn(2, 4, 5, 5, requires_grad=True)
    fr = torch.randn(2, 4, 5, 5) + 0.5
    matching_loss(fs, fr).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0


@pytest.mark.parametrize("h,w", [(17, 9), (33, 70), (3, 5)])
def test_odd_sizes_round_trip(h, w):
    spec = get_spec("semimsn")
    net = spec.build(spec.config(**TINY)).eval()
    with torch.inference_mode():
        assert net(torch.rand(1, 3, h, w)).shape == (1, 3, h, w)


def test_tiled_equals_untiled():
    from derain_cli.api import Derainer

    spec = get_spec("semimsn")
    torch.manual_seed(0)
    net = spec.build(spec.config(**TINY)).eval()
    d = Derainer(spec, spec.config(**TINY), net, torch.device("cpu"))
    import numpy as np

    img = (np.random.default_rng(0).random((100, 140, 3)) * 255).astype(np.uint8)
    whole = d.process(img, tile=4096)
    tiled = d.process(img, tile=48, tile_overlap=d.traits.tile_margin)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_semi_step_reports_the_matching_term():
    spec = get_spec("semimsn")
    recipe = spec.recipe(spec, spec.config(**TINY), "semi")
    recipe.setup(5)
    b = {k: torch.rand(2, 3, 16, 16) for k in ("rainy", "clean", "real")}
    terms = recipe.train_step(b, 0)
    assert "match" in terms and float(terms["match"]) >= 0


def test_shipped_weights_raise_psnr_on_bundled_crops():
    from shipped import psnr_gain_on_crops

    before, after = psnr_gain_on_crops("semimsn")
    assert after > before + 0.3, (before, after)
