"""Frames and rendered images (PS3.18 §10.4): the grey levels a radiologist sees, frame bytes an OHIF viewer gets."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from imaging.render import (
    PRESETS,
    FrameNotFound,
    InvalidRenderParameter,
    NoPixelData,
    PixelDataError,
    extract_frame,
    render,
    thumbnail,
)
from tests.imaging.dicom_factory import make_ct_slice, new_uid

#: Hounsfield units of a 2 x 4 CT slice; the file stores HU + 1024 (Rescale Intercept -1024, slope 1).
HU = np.array([[-1000, 0, 40, 100], [240, -160, 1000, 2000]], dtype=np.int32)


def _ct(path: Path, pixels: NDArray[np.integer[Any]] | bytes, **options: Any) -> Path:
    rows, cols = options.pop("shape", HU.shape)
    data = pixels if isinstance(pixels, bytes) else pixels.astype("<u2").tobytes()
    extra = {"PixelData": data, **options.pop("extra", {})}
    return make_ct_slice(
        path,
        study_uid=new_uid(),
        series_uid=new_uid(),
        sop_uid=new_uid(),
        patient_name="Zhang^San=张^三",
        charset="GB18030",
        rows=rows,
        cols=cols,
        extra=extra,
        **options,
    )


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _expected_linear(hu: NDArray[np.int32], center: float, width: float) -> NDArray[np.int64]:
    """PS3.3 C.11.2.1.2.1, written out independently of the module under test."""
    out = np.empty(hu.shape, dtype=np.int64)
    for index, x in np.ndenumerate(hu):
        if x <= center - 0.5 - (width - 1) / 2:
            out[index] = 0
        elif x > center - 0.5 + (width - 1) / 2:
            out[index] = 255
        else:
            out[index] = round(((x - (center - 0.5)) / (width - 1) + 0.5) * 255)
    return out


def test_the_stored_window_maps_hounsfield_units_to_the_right_grey_levels(tmp_path: Path) -> None:
    path = _ct(tmp_path / "ct.dcm", HU + 1024)  # the file says WindowCenter 40, WindowWidth 400

    image = _decoded(render(path, media_type="image/png"))

    assert image.mode == "L"
    assert image.size == (4, 2)
    grey = np.asarray(image)
    assert grey.tolist() == [[0, 102, 128, 166], [255, 0, 255, 255]]
    assert grey.tolist() == _expected_linear(HU, 40, 400).tolist()


@pytest.mark.parametrize("preset", ["lung", "bone", "brain"])
def test_an_explicit_window_overrides_the_stored_one(tmp_path: Path, preset: str) -> None:
    path = _ct(tmp_path / "ct.dcm", HU + 1024)
    center, width = PRESETS[preset]

    grey = np.asarray(_decoded(render(path, media_type="image/png", window=(center, width))))

    assert grey.tolist() == _expected_linear(HU, center, width).tolist()


def test_without_any_window_the_frame_range_fills_the_grey_scale(tmp_path: Path) -> None:
    path = _ct(tmp_path / "ct.dcm", HU + 1024, omit=("WindowCenter", "WindowWidth"))

    grey = np.asarray(_decoded(render(path, media_type="image/png")))

    assert grey[1, 3] == 255  # 2000 HU, the maximum
    assert grey[0, 0] == 0  # -1000 HU, the minimum
    assert 0 < grey[0, 1] < grey[0, 3] < grey[1, 2] < 255


def test_rescale_slope_is_applied_before_the_window(tmp_path: Path) -> None:
    # Stored 0..7 with slope 100 and intercept -300: -300, -200, ... 400 HU.
    stored = np.arange(8, dtype=np.int32).reshape(2, 4)
    path = _ct(tmp_path / "ct.dcm", stored, extra={"RescaleSlope": "100", "RescaleIntercept": "-300"})

    grey = np.asarray(_decoded(render(path, media_type="image/png", window=(40, 400))))

    assert grey.tolist() == _expected_linear(stored * 100 - 300, 40, 400).tolist()


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    normal = _ct(tmp_path / "m2.dcm", HU + 1024)
    inverted = _ct(tmp_path / "m1.dcm", HU + 1024, extra={"PhotometricInterpretation": "MONOCHROME1"})

    grey2 = np.asarray(_decoded(render(normal, media_type="image/png")), dtype=np.int32)
    grey1 = np.asarray(_decoded(render(inverted, media_type="image/png")), dtype=np.int32)

    assert (grey1 == 255 - grey2).all()
    assert grey1[0, 0] == 255  # air is white on a MONOCHROME1 image


def test_rgb_pixels_pass_through_unchanged(tmp_path: Path) -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    path = _ct(
        tmp_path / "rgb.dcm",
        rgb.tobytes(),
        shape=(2, 2),
        bits_allocated=8,
        extra={"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
    )

    image = _decoded(render(path, media_type="image/png"))

    assert image.mode == "RGB"
    assert np.asarray(image).tolist() == rgb.tolist()


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png"])
def test_the_viewport_shrinks_the_image_and_keeps_its_aspect_ratio(tmp_path: Path, media_type: str) -> None:
    stored = np.tile(np.arange(200, dtype=np.int32) * 10, (100, 1))  # 200 wide, 100 high
    path = _ct(tmp_path / "wide.dcm", stored, shape=(100, 200))

    shrunk = _decoded(render(path, media_type=media_type, viewport=(50, 50)))  # type: ignore[arg-type]
    unchanged = _decoded(render(path, media_type=media_type, viewport=(1000, 1000)))  # type: ignore[arg-type]
    full = _decoded(render(path, media_type=media_type))  # type: ignore[arg-type]

    assert shrunk.format == ("JPEG" if media_type == "image/jpeg" else "PNG")
    assert shrunk.size == (50, 25)
    assert unchanged.size == full.size == (200, 100)  # never enlarged


def test_non_square_pixels_are_shown_square(tmp_path: Path) -> None:
    path = _ct(tmp_path / "us.dcm", HU + 1024, extra={"PixelSpacing": [1.0, 0.5]})  # rows twice as far apart

    assert _decoded(render(path, media_type="image/png")).size == (4, 4)


def _frames(count: int, rows: int = 3, cols: int = 5) -> list[bytes]:
    # Every frame different, so that slicing at the wrong offset cannot go unnoticed.
    return [
        (np.arange(rows * cols, dtype=np.uint16) + 1000 * (number + 1)).astype("<u2").tobytes()
        for number in range(count)
    ]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_extract_frame_returns_the_bytes_of_the_requested_frame(tmp_path: Path, syntax: str) -> None:
    frames = _frames(3)
    path = _ct(tmp_path / "mf.dcm", b"".join(frames), shape=(3, 5), frames=3, transfer_syntax=syntax)

    frame = extract_frame(path, 2)

    assert frame.data == frames[1]
    assert frame.transfer_syntax_uid == syntax
    assert not frame.is_encapsulated
    assert (frame.frame_number, frame.number_of_frames, frame.rows, frame.columns) == (2, 3, 3, 5)
    assert extract_frame(path, 1).data == frames[0]
    assert extract_frame(path, 3).data == frames[2]


def test_encapsulated_frames_come_back_compressed_with_their_syntax(tmp_path: Path) -> None:
    # Stand-ins for JPEG bit streams (even lengths, as fragments must be): splitting is what is tested here.
    streams = [b"\xff\xd8frame-one\xff\xd9\x00", b"\xff\xd8frame-two!\xff\xd9", b"\xff\xd8three!\xff\xd9"]
    assert all(len(stream) % 2 == 0 for stream in streams)
    path = _ct(
        tmp_path / "jpeg.dcm",
        encapsulate(streams),
        shape=(3, 5),
        frames=3,
        bits_allocated=8,
        transfer_syntax=JPEGBaseline8Bit,
    )

    frame = extract_frame(path, 2)

    assert frame.data == streams[1]
    assert frame.transfer_syntax_uid == JPEGBaseline8Bit
    assert frame.is_encapsulated


@pytest.mark.parametrize("number", [0, 4, -1])
def test_a_frame_number_outside_the_instance_is_refused(tmp_path: Path, number: int) -> None:
    path = _ct(tmp_path / "mf.dcm", b"".join(_frames(3)), shape=(3, 5), frames=3)

    with pytest.raises(FrameNotFound, match="3 frame") as error:
        extract_frame(path, number)
    assert error.value.http_status == 404
    with pytest.raises(FrameNotFound):
        render(path, frame=number)


def test_single_frame_instances_have_exactly_one_frame(tmp_path: Path) -> None:
    path = _ct(tmp_path / "ct.dcm", HU + 1024)
    assert extract_frame(path, 1).data == (HU + 1024).astype("<u2").tobytes()
    with pytest.raises(FrameNotFound):
        extract_frame(path, 2)


def test_missing_or_truncated_pixel_data_is_reported(tmp_path: Path) -> None:
    without = _ct(tmp_path / "none.dcm", HU + 1024, omit=("PixelData",))
    with pytest.raises(NoPixelData):
        extract_frame(without, 1)
    with pytest.raises(NoPixelData):
        render(without)

    short = _ct(tmp_path / "short.dcm", b"".join(_frames(3))[:-30], shape=(3, 5), frames=3)
    with pytest.raises(PixelDataError):
        extract_frame(short, 3)


def test_invalid_rendering_parameters_are_refused(tmp_path: Path) -> None:
    path = _ct(tmp_path / "ct.dcm", HU + 1024)
    for arguments in (
        {"window": (40.0, 0.5)},
        {"viewport": (0, 10)},
        {"quality": 0},
        {"media_type": "image/gif"},
    ):
        with pytest.raises(InvalidRenderParameter):
            render(path, **arguments)


def test_thumbnail_is_a_small_jpeg_of_the_middle_frame(tmp_path: Path) -> None:
    rows = cols = 300
    # Frame 1 all air (black), frame 2 all 40 HU (mid grey in the 40/400 window), frame 3 all bone (white).
    frames = [np.full((rows, cols), value, dtype="<u2").tobytes() for value in (0, 1064, 4000)]
    path = _ct(tmp_path / "mf.dcm", b"".join(frames), shape=(rows, cols), frames=3)

    data = thumbnail(path)
    image = _decoded(data)

    assert data[:3] == b"\xff\xd8\xff"
    assert image.format == "JPEG"
    assert max(image.size) <= 128
    assert image.size == (128, 128)
    assert abs(float(np.asarray(image).mean()) - 128) < 3
    assert max(_decoded(thumbnail(path, size=64)).size) <= 64
