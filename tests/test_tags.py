"""Several weights per architecture: ``NAME.TAG`` entries, the default tag, and their errors."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from derain_cli import weights
from derain_cli.errors import WeightsError
from derain_cli.registry import UnknownModelError, get_spec, split_name
from test_weights import env, make_weights  # noqa: F401 (fixture)


def tagged_toml(name: str, data: bytes, *, default: bool = False, sha: str | None = None) -> str:
    file = name.replace(".", "-") + ".safetensors"
    return f"""
["{name}"]
file = "{file}"
sha256 = "{sha or hashlib.sha256(data).hexdigest()}"
size = {len(data)}
preset = "tiny"
config = {{ c = 4 }}
trained_on = "random tensors for tests (research use only)"
steps = 1
recipe = "recipes/test.toml"
{'default = true' if default else ''}

["{name}".metrics.rain100l]
psnr = 12.5
command = "derain bench rain100l --model {name}"
"""


@pytest.fixture
def two_tags(env):  # noqa: F811
    """``dualstage.rain100l`` and ``dualstage.general`` (the default) bundled, different bytes."""
    bench = make_weights(env / "bundled" / "dualstage-rain100l.safetensors", seed=1)
    general = make_weights(env / "bundled" / "dualstage-general.safetensors", seed=2)
    (env / "weights.toml").write_text(tagged_toml("dualstage.rain100l", bench)
                                      + tagged_toml("dualstage.general", general, default=True))
    return bench, general


def test_split_name_reads_timm_style_tags():
    assert split_name("dualstage") == ("dualstage", None)
    assert split_name("dualstage.general") == ("dualstage", "general")
    assert get_spec("semimsn.general").name == "semimsn"
    with pytest.raises(UnknownModelError, match="unknown model 'nosuch'"):
        split_name("nosuch.general")
    with pytest.raises(UnknownModelError, match="empty tag"):
        split_name("dualstage.")


def test_a_tag_resolves_to_its_own_file_and_a_bare_name_to_the_default(two_tags):
    bench, general = two_tags
    assert weights.entry("dualstage.rain100l").tag == "rain100l"
    assert weights.weights_path("dualstage.rain100l").read_bytes() == bench
    assert weights.weights_path("dualstage.general").read_bytes() == general
    assert weights.entry("dualstage").name == "dualstage.general"
    assert [e.name for e in weights.tagged_entries("dualstage")] == ["dualstage.general", "dualstage.rain100l"]


def test_without_a_default_the_first_listed_tag_serves_a_bare_name(env):  # noqa: F811
    data = make_weights(env / "bundled" / "dualstage-rain100l.safetensors")
    (env / "weights.toml").write_text(tagged_toml("dualstage.rain100l", data))
    assert weights.entry("dualstage").name == "dualstage.rain100l"


def test_an_unknown_tag_is_one_line_naming_the_tags_there_are(two_tags):
    with pytest.raises(WeightsError) as err:
        weights.entry("dualstage.foggy")
    msg = str(err.value)
    assert "\n" not in msg and "no weights tagged 'foggy'" in msg
    assert "dualstage.general" in msg and "dualstage.rain100l" in msg


def test_a_tagged_entry_with_a_wrong_sha256_is_refused(env):  # noqa: F811
    data = make_weights(env / "bundled" / "dualstage-general.safetensors")
    (env / "weights.toml").write_text(tagged_toml("dualstage.general", data, sha="0" * 64))
    with pytest.raises(WeightsError, match="do not match weights.toml"):
        weights.weights_path("dualstage.general")
    with pytest.raises(WeightsError, match="do not match weights.toml"):
        weights.open_weights("dualstage.general")


def test_two_defaults_for_one_model_are_refused(env):  # noqa: F811
    a = make_weights(env / "bundled" / "dualstage-a.safetensors", seed=1)
    b = make_weights(env / "bundled" / "dualstage-b.safetensors", seed=2)
    (env / "weights.toml").write_text(tagged_toml("dualstage.a", a, default=True)
                                      + tagged_toml("dualstage.b", b, default=True))
    with pytest.raises(WeightsError, match="both the default"):
        weights.load_registry()


def test_a_tag_must_belong_to_its_model(env):  # noqa: F811
    data = make_weights(env / "bundled" / "dualstage-general.safetensors")
    text = tagged_toml("dualstage.general", data).replace('preset = "tiny"', 'preset = "tiny"\nmodel = "semimsn"')
    (env / "weights.toml").write_text(text)
    with pytest.raises(WeightsError, match="named MODEL.TAG"):
        weights.load_registry()


def test_cli_unknown_tag_is_one_clear_line_and_exit_2(tmp_path):
    import cv2

    from conftest import make_rainy_pair

    img = tmp_path / "x.png"
    cv2.imwrite(str(img), make_rainy_pair(24, 24)[0])
    r = subprocess.run([sys.executable, "-m", "derain_cli.cli", "run", str(img), "--model", "dualstage.nosuch",
                        "-o", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no weights tagged 'nosuch'" in lines[0], r.stderr
    assert not (tmp_path / "out.png").exists()


def test_shipped_registry_keeps_the_benchmark_weights_one_name_away():
    entries = weights.load_registry(weights.PACKAGED_TOML)
    for model in ("dualstage", "semimsn", "jrgr", "dcdgan", "rainfog"):
        assert f"{model}.rain100l" in entries
        assert "rain100l" in entries[f"{model}.rain100l"].metrics
