"""Image I/O: formats, bit depths, gray, alpha, EXIF orientation, ICC, odd paths, bad files, safe writes."""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from derain_cli import imageio
from derain_cli.errors import ImageError
from derain_cli.imageio import Photo, default_output, read_image, write_image


def _rgb(h=24, w=32, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    return (rng.random((h, w, 3)) * top).astype(dtype)


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    e[0x010F] = "TestCam"  # Make: must survive the round trip
    return e


def _write_cv(path, bgr):
    ok, buf = cv2.imencode(path.suffix, bgr)
    assert ok
    path.write_bytes(buf.tobytes())


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_lossless_8bit_round_trip(tmp_path, suffix):
    rgb = _rgb()
    src = tmp_path / f"a{suffix}"
    _write_cv(src, rgb[:, :, ::-1])
    photo = read_image(src)
    assert photo.rgb.dtype == np.uint8 and not photo.gray and photo.alpha is None
    np.testing.assert_array_equal(photo.rgb, rgb)
    out = write_image(default_output(src), photo)
    assert out.name == f"a_derained{suffix}"
    np.testing.assert_array_equal(read_image(out).rgb, rgb)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_kept(tmp_path, suffix):
    rgb = _rgb(dtype=np.uint16)
    src = tmp_path / f"deep{suffix}"
    _write_cv(src, rgb[:, :, ::-1])
    photo = read_image(src)
    assert photo.rgb.dtype == np.uint16 and photo.bit_depth == 16
    out = write_image(tmp_path / f"out{suffix}", photo)
    back = cv2.imdecode(np.fromfile(str(out), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[:, :, ::-1], rgb)


def test_16bit_to_8bit_format_is_rounded(tmp_path):
    photo = Photo(rgb=np.full((4, 4, 3), 65535 // 2, np.uint16), suffix=".png")
    out = write_image(tmp_path / "x.jpg", photo)
    assert read_image(out).rgb.dtype == np.uint8
    assert abs(int(read_image(out).rgb.mean()) - 127) <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grayscale_in_gray_out(tmp_path, dtype):
    gray = _rgb(dtype=dtype)[:, :, 0]
    src = tmp_path / "g.png"
    _write_cv(src, gray)
    photo = read_image(src)
    assert photo.gray and photo.rgb.shape == gray.shape + (3,)
    assert (photo.rgb[:, :, 0] == photo.rgb[:, :, 2]).all()
    out = write_image(tmp_path / "o.png", photo)
    back = cv2.imdecode(np.fromfile(str(out), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.ndim == 2 and back.dtype == dtype
    np.testing.assert_array_equal(back, gray)


@pytest.mark.parametrize("suffix,dtype", [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint8), (".webp", np.uint8)])
def test_alpha_passes_through(tmp_path, suffix, dtype):
    rgb = _rgb(dtype=dtype)
    alpha = _rgb(seed=5, dtype=dtype)[:, :, 0]
    src = tmp_path / f"a{suffix}"
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == ".webp" else []  # lossless WebP
    ok, buf = cv2.imencode(suffix, np.dstack([rgb[:, :, ::-1], alpha]), params)
    src.write_bytes(buf.tobytes())
    photo = read_image(src)
    np.testing.assert_array_equal(photo.alpha, alpha)
    # a model changes the colours; the alpha plane must come back untouched
    out = write_image(tmp_path / f"o{suffix}", photo.with_pixels(255 - photo.rgb if dtype == np.uint8 else photo.rgb))
    back = read_image(out)
    np.testing.assert_array_equal(back.alpha, alpha)


def test_gray_alpha(tmp_path):
    la = np.dstack([_rgb()[:, :, 0], _rgb(seed=3)[:, :, 0]])
    src = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(src)
    photo = read_image(src)
    assert photo.gray
    np.testing.assert_array_equal(photo.alpha, la[:, :, 1])
    out = write_image(tmp_path / "o.png", photo)
    with Image.open(out) as im:
        back = np.asarray(im.convert("LA"))
    np.testing.assert_array_equal(back, la)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_and_reset(tmp_path, orientation):
    rgb = _rgb(20, 30)
    src = tmp_path / "o.png"
    Image.fromarray(rgb).save(src, exif=_exif(orientation))
    with Image.open(src) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    photo = read_image(src)
    np.testing.assert_array_equal(photo.rgb, expected)
    out = write_image(tmp_path / "upright.jpg", photo)
    with Image.open(out) as im:
        exif = im.getexif()
        assert exif.get(0x0112) == 1
        assert exif.get(0x010F) == "TestCam"
        assert im.size == (expected.shape[1], expected.shape[0])


def test_jpeg_exif_orientation(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:10, :20] = 255  # a white block top-left, then rotate 90 degrees by EXIF (6)
    src = tmp_path / "cam.jpg"
    Image.fromarray(rgb).save(src, exif=_exif(6), quality=95)
    photo = read_image(src)
    assert photo.rgb.shape == (60, 40, 3)
    assert photo.rgb[:10, -10:].mean() > 200 and photo.rgb[-10:, :10].mean() < 50


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_icc_and_exif_carried(tmp_path, suffix):
    icc = _srgb_icc()
    src = tmp_path / f"p{suffix}"
    Image.fromarray(_rgb()).save(src, icc_profile=icc, exif=_exif(1))
    photo = read_image(src)
    assert photo.icc == icc
    out = write_image(tmp_path / f"o{suffix}", photo)
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc
        assert im.getexif().get(0x010F) == "TestCam"


def test_jpeg_quality(tmp_path):
    photo = Photo(rgb=_rgb(64, 64), suffix=".jpg")
    low = write_image(tmp_path / "low.jpg", photo, quality=40).stat().st_size
    high = write_image(tmp_path / "high.jpg", photo).stat().st_size  # default 95
    assert low < high
    with pytest.raises(ImageError, match="quality"):
        write_image(tmp_path / "bad.jpg", photo, quality=0)


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "pluie ☔ 雨"
    folder.mkdir()
    src = folder / "photo éà 写真.png"
    rgb = _rgb()
    src.write_bytes(cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes())
    photo = read_image(src)
    np.testing.assert_array_equal(photo.rgb, rgb)
    out = write_image(default_output(src), photo)
    assert out.name == "photo éà 写真_derained.png" and out.is_file()
    np.testing.assert_array_equal(imageio.read_rgb8(out), rgb)


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.png", b""),
        ("text.jpg", b"this is not an image at all"),
        ("cut.png", cv2.imencode(".png", np.zeros((50, 50, 3), np.uint8) + 7)[1].tobytes()[:60]),
        ("cut.jpg", _jpeg_bytes()[: len(_jpeg_bytes()) * 2 // 3]),
    ],
)
def test_corrupt_and_truncated_inputs(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match="not a readable image|truncated"):
        read_image(path)


def test_missing_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_never_overwrites_input(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(cv2.imencode(".png", _rgb())[1].tobytes())
    before = src.read_bytes()
    photo = read_image(src)
    with pytest.raises(ImageError, match="overwrite an input"):
        write_image(src, photo.with_pixels(255 - photo.rgb), inputs=(src,))
    with pytest.raises(ImageError, match="overwrite an input"):
        write_image(tmp_path / "." / "in.png", photo, inputs=(src,))
    assert src.read_bytes() == before


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    photo = Photo(rgb=_rgb(), suffix=".png")

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", photo)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ImageError, match="cannot write"):
        write_image(blocker / "sub" / "o.png", Photo(rgb=_rgb()))
    with pytest.raises(ImageError, match="cannot write .gif"):
        write_image(tmp_path / "o.gif", Photo(rgb=_rgb()))


def test_output_gets_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_image(tmp_path / "o.png", Photo(rgb=_rgb()))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_icc_of_another_colour_space_is_dropped(tmp_path):
    icc = bytearray(_srgb_icc())
    icc[16:20] = b"CMYK"  # e.g. a CMYK JPEG: its profile does not describe the RGB pixels we write
    out = write_image(tmp_path / "o.jpg", Photo(rgb=_rgb(), icc=bytes(icc)))
    with Image.open(out) as im:
        assert "icc_profile" not in im.info
    out = write_image(tmp_path / "o2.jpg", Photo(rgb=_rgb(), icc=_srgb_icc()))
    with Image.open(out) as im:
        assert im.info["icc_profile"] == _srgb_icc()


def test_encoder_limits_are_user_errors(tmp_path):
    wide = Photo(rgb=np.zeros((2, 17000, 3), np.uint8))
    with pytest.raises(ImageError, match="cannot encode a 17000x2 .webp"):
        write_image(tmp_path / "wide.webp", wide)
    assert list(tmp_path.iterdir()) == []


def test_list_images_is_the_one_folder_rule(tmp_path):
    """Training, dataset, synth and rainify folders all list images through imageio.list_images."""
    from derain_cli.commands.rainify import collect_images
    from derain_cli.datasets import list_images as by_stem
    from derain_cli.errors import DerainError
    from derain_cli.synth_sets import list_images as synth_list
    from derain_cli.train.data import list_images as train_list

    for name in ("b.PNG", "a.jpg", "c.heic", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in imageio.list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert train_list is synth_list is imageio.list_images
    assert list(by_stem(tmp_path)) == ["a", "b"]
    assert [p.name for p in collect_images([tmp_path])] == ["a.jpg", "b.PNG", "c.heic"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DerainError, match=r"no images in .*empty \(looked for \.bmp, \.jpeg, .*\.webp\)"):
        imageio.list_images(empty)
    assert imageio.list_images(empty, required=False) == [] and by_stem(empty) == {}
    with pytest.raises(DerainError, match="not a folder"):
        imageio.list_images(tmp_path / "a.jpg")
