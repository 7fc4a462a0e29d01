"""dualstage: the morphological rain mask, shapes, the tiling declaration, shipped weights."""
import numpy as np
import pytest
import torch

from derain_cli.models import dualstage
from derain_cli.models.common import box_extreme, shifted_extreme
from derain_cli.registry import Tiling, get_spec

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


def _random_net(preset="cpu", gain=0.5, **overrides):
    """A dualstage net whose every weight matrix is redrawn (the refiner's zeroed convs too)."""
    from tiny_spec import randomize

    spec = get_spec("dualstage")
    torch.manual_seed(0)
    return randomize(spec.build(spec.config(preset, **overrides)).eval(), gain=gain)


def test_spec_declares_tiles_safe_with_the_measured_margin():
    # The image-wide attention runs once per image (tile_context), so tiles agree with the whole image.
    spec = get_spec("dualstage")
    traits = spec.traits(spec.config())
    assert traits.tiling is Tiling.CONTEXT and traits.tile_margin >= sum(dualstage.local_margins(spec.config())) + 3
    assert callable(getattr(spec.build(spec.config(**TINY)), "tile_context", None))
    assert set(spec.presets) >= {"cpu", "paper"}


def test_margin_bounds_the_local_receptive_field():
    # With the context fixed (everything up to the attention, and its output), an output pixel depends
    # only on input pixels within local_margins: redraw everything farther away and it does not move.
    net = _random_net(gain=1.5)  # large enough that far paths do not fade below float noise
    x = torch.rand(1, 3, 200, 232)
    m, (cy, cx) = sum(dualstage.local_margins(net.cfg)), (100, 116)
    assert m + 3 <= dualstage.tile_margin(net.cfg)
    far = torch.rand_like(x)
    far[..., cy - m:cy + m + 1, cx - m:cx + m + 1] = x[..., cy - m:cy + m + 1, cx - m:cx + m + 1]
    with torch.inference_mode():
        ctx = net.tile_context(x, 1024)
        near = net.forward_tile(x, ctx, (0, 0))[..., cy, cx]
        assert torch.equal(net.forward_tile(far, ctx, (0, 0))[..., cy, cx], near)
        closer = far.clone()  # the margin is not loose: a change at the edge of the refiner's reach shows
        closer[..., cy - 16:cy - 13, cx - 1:cx + 2] += 0.5
        assert not torch.equal(net.forward_tile(closer, ctx, (0, 0))[..., cy, cx], near)  # bitwise, as above


def test_window_computes_only_what_is_kept_and_the_same_values():
    net = _random_net(**TINY)
    x = torch.rand(1, 3, 150, 131)
    with torch.inference_mode():
        ctx = net.tile_context(x, 64)
        tile = x[..., 40:120, 28:100]
        full = net.forward_tile(tile, ctx, (40, 28))
        part = net.forward_tile(tile, ctx, (40, 28), window=(30, 50, 20, 44))
    assert torch.allclose(part[..., 30:50, 20:44], full[..., 30:50, 20:44], atol=1e-5)
    assert not torch.allclose(part, full, atol=1e-3)  # outside the window it was not computed


@pytest.mark.parametrize("head_tile,chunk,blocks", [(32, 40, 1), (64, 1 << 16, 1), (4096, 100, 1), (64, 100, 3)])
def test_context_equals_the_whole_image_attention(head_tile, chunk, blocks, monkeypatch):
    monkeypatch.setattr(dualstage, "LEAN_CHUNK", chunk)  # small chunks: many bands and group chunks
    # gain 1.5: stage 1's blocks then carry a pixel's influence as far as they reach (4 px each),
    # so a head margin 4 px short of head_margins() fails here
    net = _random_net(gain=1.5 if blocks > 1 else 0.5, **{**TINY, "stage1_blocks": blocks})
    x = torch.rand(1, 3, 150, 131) if blocks == 1 else torch.rand(1, 3, 250, 231)  # odd sides: split reflect padding
    with torch.inference_mode():
        xp, _ = dualstage.pad_to_multiple(x, net.multiple)
        whole = net.stage2.blocks(net.stage2.down(net._head(xp)[1]))
        coarse, feats = net._head(xp)
        ctx = net.tile_context(x, head_tile)
    for got, want in [(ctx.g, whole), (ctx.f, feats), (ctx.coarse, coarse)]:
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5 * want.abs().max().clamp_min(1))


@pytest.mark.parametrize("flips,keep,veil", [(1, True, 0), (2, True, 0), (1, False, 0), (1, True, 4)])
def test_tiled_matches_whole_image(flips, keep, veil, monkeypatch):
    from derain_cli.api import Derainer

    if not keep:  # a photo too big to keep the context's maps in float32: kept in float16, within its rounding
        monkeypatch.setattr(dualstage, "KEEP_FP32_BYTES", 0)

    spec = get_spec("dualstage")
    cfg = {**TINY, "veil_width": veil, "veil_scale": 4}  # the veil head: an image-wide map tiles share
    net = _random_net(**cfg)
    d = Derainer(spec, spec.config(**cfg), net, torch.device("cpu"), ensemble=flips)
    img = np.random.default_rng(0).random((150, 203, 3)).astype(np.float32)
    whole = d.process(img, tile=4096)
    tiled = d.process(img, tile=48)
    assert d.last_tile == 48 and d.last_overlap == d.traits.tile_margin
    assert np.abs(tiled - whole).max() < (1e-4 if keep else 1e-3)
    # Without the shared context (each tile its own k-means and GroupNorm) tiles disagree.
    d.net = type("PerTile", (), {"__call__": lambda self, x: net(x)})()
    assert not hasattr(d.net, "tile_context")
    assert np.abs(d.process(img, tile=48) - whole).max() > 1e-2


def test_a_tiled_photo_reports_its_context_then_its_tiles():
    # The context is 40% of a 24 MP photo's time: a bar frozen at 0 tiles meanwhile would look hung.
    from derain_cli.api import Derainer

    spec = get_spec("dualstage")
    d = Derainer(spec, spec.config(**TINY), _random_net(**TINY), torch.device("cpu"))
    calls = []
    d.progress = lambda done, total, label="tiles": calls.append((label, done, total))
    d.process(np.random.default_rng(0).random((150, 203, 3)).astype(np.float32), tile=64)
    context = [c for c in calls if c[0] == "context"]
    tiles = [c for c in calls if c[0] == "tiles"]
    total = context[0][2]  # the head tiles, then the 2 attention blocks
    assert total > 2 and [done for _, done, _ in context] == list(range(1, total + 1))
    assert {t for *_, t in context} == {total}
    assert tiles[0][1] == 0 and tiles[-1][1] == tiles[-1][2] == 12  # 3 x 4 tiles of 64
    assert calls.index(context[-1]) < calls.index(tiles[1])  # the context is done before the first tile is


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


def test_gentle_weights_derain_and_leave_photos_without_rain_alone():
    """What the gentle tag is for: the general weights darken some clean photos (39 dB on the clean
    crops), the gentle ones keep them (49.5 dB) and still remove rain."""
    from shipped import psnr_gain_on_crops, psnr_on_clean_crops

    before, after = psnr_gain_on_crops("dualstage.gentle")
    assert after > before + 0.3, (before, after)
    gentle, general = psnr_on_clean_crops("dualstage.gentle"), psnr_on_clean_crops("dualstage.general")
    assert gentle > 45 and gentle > general + 5, (gentle, general)


def test_general_and_night_weights_remove_lamp_lit_drops():
    """Dense drops lit from behind, at night, rendered on the bundled clean crops (16.8 dB in): the
    default learnt them (22.6 dB; the general weights before it left them at 20.4), the night tag,
    trained on them longer, removes more (23.3)."""
    import numpy as np

    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8
    from derain_cli.metrics import psnr_y
    from derain_cli.rainrender import NIGHT_EXTRAS, RenderConfig, render_pair
    from shipped import CROPS

    night_rain = RenderConfig(mix={"backlit": 1.0}, extras=dict(NIGHT_EXTRAS))
    pairs = []
    for i, path in enumerate(sorted((CROPS / "clean").glob("*.png"))):
        rainy, target, _ = render_pair(read_rgb8(path).astype(np.float32) / 255, np.random.default_rng(100 + i), night_rain)
        pairs.append(((rainy * 255 + 0.5).astype(np.uint8), (target * 255 + 0.5).astype(np.uint8)))
    before = np.mean([psnr_y(r, t) for r, t in pairs])
    general, night = (np.mean([psnr_y(derainer.process(r), t) for r, t in pairs])
                      for derainer in (load_model(m, device="cpu", threads=1) for m in ("dualstage.general", "dualstage.night")))
    assert general > before + 5 and night > general + 0.5, (before, general, night)


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


def test_log_loss_is_the_mean_of_each_images_log_loss():
    """``--set loss=log``: a light-rain crop weighs as much as a downpour's (a mean of logs, like mean PSNR)."""
    from derain_cli.errors import DerainError
    from derain_cli.models.common import charbonnier, edge_loss

    spec = get_spec("dualstage")
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 32, 32)
    rainy = clean.clone()
    rainy[0] += 0.5 * torch.rand(3, 32, 32)  # a downpour beside a drizzle
    rainy[1] += 0.02 * torch.rand(3, 32, 32)
    recipe = spec.recipe(spec, spec.config(**TINY), "paired", loss="log")
    recipe.setup(10)
    with torch.no_grad():
        coarse, final = recipe.nets["bundle"](rainy, stages=True)
        per = (0.5 * charbonnier(coarse, clean, per_image=True) + charbonnier(final, clean, per_image=True)
               + 0.05 * edge_loss(final, clean, per_image=True))
    assert not torch.allclose(torch.log(per).mean(), torch.log(per.mean()), atol=1e-3)  # the test can tell them apart
    got = recipe.train_step({"rainy": rainy, "clean": clean}, 0)["loss"]
    assert torch.allclose(got, torch.log(per).mean(), atol=1e-5)
    with pytest.raises(DerainError, match="choose charbonnier or log"):
        spec.recipe(spec, spec.config(**TINY), "paired", loss="l2").train_step({"rainy": rainy, "clean": clean}, 0)


def test_block_mean_error_sees_a_veil_and_not_streaks():
    """The ``lowfreq`` term scores a uniform veil and lets zero-mean detail (streaks, texture) pass."""
    from derain_cli.models.common import block_mean_error

    clean = torch.rand(1, 3, 32, 32)
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 0.4 - 0.2  # zero mean in every 8x8 block
    assert block_mean_error(clean + checker, clean).item() < 1e-10
    assert abs(block_mean_error(clean + 0.2, clean).item() - 0.04) < 1e-6


def test_lowfreq_adds_a_squared_block_error_outside_the_log():
    """``--set lowfreq=W``: the loss is the log loss plus ``W`` times the block-mean error, not its log."""
    from derain_cli.errors import DerainError
    from derain_cli.models.common import block_mean_error

    spec = get_spec("dualstage")
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 32, 32) * 0.6
    batch = {"rainy": clean + 0.3, "clean": clean}  # a veil
    losses = {}
    for w in (0.0, 50.0):
        torch.manual_seed(1)
        recipe = spec.recipe(spec, spec.config(**TINY), "paired", loss="log", lowfreq=w)
        recipe.setup(10)
        with torch.no_grad():
            veil = block_mean_error(recipe.nets["bundle"](batch["rainy"]).float(), clean).mean()
        losses[w] = recipe.train_step(batch, 0)["loss"]
    assert veil > 0.01  # an untrained net leaves the veil: the term is not small beside the log loss
    assert torch.allclose(losses[50.0] - losses[0.0], 50 * veil, rtol=1e-4)
    with pytest.raises(DerainError, match="lowfreq"):
        spec.recipe(spec, spec.config(**TINY), "paired", lowfreq=-1.0)


def test_an_8_bit_photo_gives_the_same_context_as_its_float_copy():
    """Derainer hands an 8-bit photo to ``tile_context`` as it is (no 4-bytes-a-value copy of a big photo)."""
    from derain_cli import tiling

    net = _random_net(**{**TINY, "veil_width": 4, "veil_scale": 4})
    img = np.random.default_rng(1).integers(0, 256, (150, 131, 3), dtype=np.uint8)
    with torch.inference_mode():
        a = net.tile_context(torch.from_numpy(img).permute(2, 0, 1)[None], 64)
        b = net.tile_context(tiling.unit_tensor(img), 64)
    for name in ("g", "f", "coarse", "veil"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
