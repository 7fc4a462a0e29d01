"""One tiny config per registered model, shared by the tests: builds and trains in well under a second.

Each is a set of overrides on the model's ``cpu`` preset (``spec.config("cpu", **TINY[name])``).
"""
from __future__ import annotations

SEMIMSN_TINY = dict(channels=4, units=1, cclb_depth=1, fullres_blocks=1, fullres_width=4)
DUALSTAGE_TINY = dict(channels=4, stage1_width=8, stage1_blocks=1, dim=16, depth=2, heads=1, window=4, clusters=2,
                      fullres_blocks=1, fullres_width=4)
DCDGAN_TINY = dict(ngf=8, n_blocks=2, ndf=8, nce_layers=[4, 8, 12, 13], num_patches=32, nce_dim=32,
                   n_downsampling=2, w_prior=0.0)
#: jrgr with the authors' stage 2 (the cpu preset's own stage-2 options off), so each option's
#: test switches on just the one it checks.
JRGR_REFERENCE_STAGE2 = dict(remover_bn_fixed=False, trans_residual=False, disc_highpass=0.0, lambda_anchor=0.0,
                             anchor_sigma=0.0, remover_delay=0.0, lambda_idt=0.0)
JRGR_TINY = dict(unet_ngf=8, unet_downs=3, trans_ngf=4, trans_blocks=1, disc_ndf=8, disc_layers=2, pool_size=4,
                 **JRGR_REFERENCE_STAGE2)
RAINFOG_TINY = dict(ext_width=4, local_blocks=1, global_blocks=1, attn_tokens=64, width=4, blocks=1,
                    gen_width=4, gen_blocks=1, disc_width=4)

#: Model name -> tiny overrides of its ``cpu`` preset; every registered model has one.
TINY: dict[str, dict] = {
    "dualstage": DUALSTAGE_TINY,
    "semimsn": SEMIMSN_TINY,
    "dcdgan": DCDGAN_TINY,
    "jrgr": JRGR_TINY,
    "rainfog": RAINFOG_TINY,
}


def tiny_config(name: str) -> dict:
    """The ``cpu`` preset of ``name`` with its tiny overrides."""
    from derain_cli.registry import get_spec

    return get_spec(name).config("cpu", **TINY[name])

