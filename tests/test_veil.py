"""The veil head: exact on tiles, a no-op when grown, and able to undo a veil that local layers leave."""
import pytest
import torch
import torch.nn.functional as F

from derain_cli.models.common import VeilHead, upsample_part
from derain_cli.registry import get_spec


@pytest.mark.parametrize("h,w", [(40, 56), (37, 61)])
def test_upsampled_parts_equal_the_whole_and_torch_bilinear(h, w):
    grid = torch.rand(1, 4, -(-h // 8), -(-w // 8))
    whole = upsample_part(grid, 8, (0, 0), (h, w))
    part = upsample_part(grid, 8, (13, 21), (17, 30))
    assert torch.equal(part, whole[..., 13:30, 21:51])
    if h % 8 == 0 and w % 8 == 0:
        ref = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        assert torch.allclose(whole, ref, atol=1e-6)


def test_pooling_in_bands_equals_pooling_whole():
    head = VeilHead(4, 8)
    x = torch.rand(1, 3, 203, 131)
    bands = torch.cat([head.pool(x[..., r:r + 64, :]) for r in range(0, 203, 64)], -2)
    assert bands.shape == (1, 6, 26, 17) and torch.equal(bands, head.pool(x))
    # the last, partial block is the mean of the pixels it has, not of zeros
    assert torch.allclose(head.pool(x)[0, :3, -1, -1], x[0, :, 200:, 128:].mean((1, 2)))


def test_grown_head_starts_as_the_parent():
    spec = get_spec("dualstage")
    tiny = dict(channels=4, stage1_width=8, stage1_blocks=1, dim=16, depth=2, heads=1, window=4, clusters=2,
                kmeans_iters=2, fullres_blocks=1, fullres_width=4)
    parent = spec.build(spec.config(**tiny)).eval()
    grown = spec.build(spec.config(**tiny, veil_width=8)).eval()
    missing, unexpected = grown.load_state_dict(parent.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("veil.") for k in missing)
    x = torch.rand(1, 3, 48, 40)
    with torch.no_grad():
        assert torch.equal(grown(x), parent(x))


def test_head_learns_to_undo_a_veil():
    # O = a * B + (1 - a) * A with a and A varying per image: a per-pixel op cannot invert it, the head can.
    torch.manual_seed(0)
    head = VeilHead(16, 4)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)

    def batch():
        b = torch.rand(8, 3, 1, 1) * torch.rand(8, 3, 32, 32)  # scenes with dark pixels and a colour cast
        a = 0.5 + 0.4 * torch.rand(8, 1, 1, 1)
        return a * b + (1 - a) * (0.7 + 0.3 * torch.rand(8, 1, 1, 1)), b

    def loss():
        veiled, clean = batch()
        return F.mse_loss(head(veiled), clean)

    torch.manual_seed(1)
    before = loss().item()
    for _ in range(300):
        opt.zero_grad()
        loss().backward()
        opt.step()
    torch.manual_seed(1)
    assert loss().item() < 0.2 * before


def test_train_only_steps_the_named_module_and_freezes_the_rest():
    from derain_cli.errors import DerainError

    spec = get_spec("dualstage")
    tiny = dict(channels=4, stage1_width=8, stage1_blocks=1, dim=16, depth=2, heads=1, window=4, clusters=2,
                kmeans_iters=2, fullres_blocks=1, fullres_width=4, veil_width=4, veil_scale=4)
    recipe = spec.recipe(spec, spec.config(**tiny), "paired", train_only="veil")
    recipe.setup(10)
    net = recipe.nets["bundle"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    recipe.train_step({"rainy": torch.rand(2, 3, 32, 32), "clean": torch.rand(2, 3, 32, 32)}, 0)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("veil.") for k in changed)
    with pytest.raises(DerainError, match="no module veil"):
        spec.recipe(spec, spec.config(**{**tiny, "veil_width": 0}), "paired", train_only="veil").setup(10)
