"""Tile passthrough: Deep Zoom tiles of native levels are the file's own JPEG bytes, decoding to exactly the
pixels OpenSlide returns; everything else falls back to OpenSlide's path and stays correct.

Real files only, written here with tifffile, pydicom and the project's writer: an Aperio SVS (each tile a
complete JPEG, as tifffile writes), an SVS-like file with abbreviated tiles and a JPEGTables tag (as Aperio
scanners write), a generic tiled TIFF with a level at a downsample of 3 (not a Deep Zoom level), one with
partial edge tiles, a deflate-compressed tiled TIFF, a DICOM WSI (two instances, TILED_FULL, JPEG baseline
frames) and a copy of an SVS with one corrupt tile.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from django.urls import reverse
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage, generate_uid

from inference.synthetic.wsi import write_pyramidal_tiff
from tests.conftest import tissue_like
from webapp.slides import passthrough, tiles
from webapp.slides.ingest import ingest_slide

APERIO = "Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=80|AppMag = 20|MPP = 0.5"


# --- files ------------------------------------------------------------------------------------------
def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    pos, out = 2, []
    while True:
        marker, length = jpeg[pos + 1], int.from_bytes(jpeg[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            return [*out, (marker, jpeg[pos:])]
        out.append((marker, jpeg[pos:pos + 2 + length]))
        pos += 2 + length


def _abbreviated_tiles(rgb: np.ndarray, tile: int) -> tuple[bytes, list[bytes]]:
    """Each tile as an abbreviated JPEG stream (SOI, SOF, SOS, data, EOI) and the shared tables (SOI, DQT,
    DHT, EOI): the layout of Aperio's TIFF tiles with tag 347."""
    tables, streams = None, []
    height, width = rgb.shape[:2]
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = rgb[y:y + tile, x:x + tile]
            block[:part.shape[0], :part.shape[1]] = part
            buffer = io.BytesIO()
            Image.fromarray(block).save(buffer, "JPEG", quality=80)
            segments = _segments(buffer.getvalue())
            these = b"\xff\xd8" + b"".join(s for m, s in segments if m in (0xDB, 0xC4)) + b"\xff\xd9"
            assert tables in (None, these)  # one quality, standard Huffman tables: the same for every tile
            tables = these
            streams.append(b"\xff\xd8" + b"".join(s for m, s in segments if m in (0xC0, 0xDA)))
    return tables, streams


def _jpeg_tiles(rgb: np.ndarray, tile: int) -> list[bytes]:
    out = []
    for y in range(0, rgb.shape[0], tile):
        for x in range(0, rgb.shape[1], tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = rgb[y:y + tile, x:x + tile]
            block[:part.shape[0], :part.shape[1]] = part
            buffer = io.BytesIO()
            Image.fromarray(block).save(buffer, "JPEG", quality=80)
            out.append(buffer.getvalue())
    return out


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_dicom_wsi(folder: Path, levels: list[tuple[int, int, list[bytes]]], tile: int, mpp: float = 0.5) -> list[Path]:
    """A DICOM VL Whole Slide Microscopy series, one file per level (width, height, row-major JPEG frames):
    TILED_FULL, one focal plane, one optical path, JPEG baseline (YBR_FULL_422), as WSI converters write."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for index, (width, height, frames) in enumerate(levels):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
        meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = VLWholeSlideMicroscopyImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality, ds.Manufacturer, ds.PatientName, ds.PatientID = "SM", "Synthetic", "Synthetic", "SYN-1"
        ds.ContainerIdentifier, ds.SeriesNumber, ds.InstanceNumber = "SYN-SLIDE-1", 1, index + 1
        ds.ImageType = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if index == 0
                        else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = width, height, 1
        ds.Columns = ds.Rows = tile
        ds.NumberOfFrames = len(frames)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.LossyImageCompression, ds.BurnedInAnnotation, ds.SpecimenLabelInImage = "01", "NO", "NO"
        ds.FocusMethod, ds.ExtendedDepthOfField = "AUTO", "NO"
        spacing = mpp * levels[0][0] / width / 1000  # mm
        measures = Dataset()
        measures.PixelSpacing, measures.SliceThickness = [spacing, spacing], 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = width * spacing, height * spacing, 0.001
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 0
        ds.TotalPixelMatrixOriginSequence = [origin]
        optical = Dataset()
        optical.OpticalPathIdentifier = "1"
        optical.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
        optical.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
        ds.OpticalPathSequence, ds.NumberOfOpticalPaths = [optical], 1
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
        paths.append(folder / f"level-{index}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("passthrough")
    rgb = tissue_like(1024, 1536, seed=3)
    out = {"svs": write_pyramidal_tiff(folder / "plain.svs", tissue_like(2048, 3072, seed=1), mpp=0.5)}

    tables, streams = _abbreviated_tiles(rgb, 256)
    out["svs_tables"] = folder / "tables.svs"
    with tifffile.TiffWriter(out["svs_tables"]) as writer:
        writer.write(iter(streams), shape=rgb.shape, dtype=np.uint8, tile=(256, 256), compression="jpeg",
                     photometric="ycbcr", subsampling=(2, 2), metadata=None,
                     description=APERIO.format(w=1536, h=1024), extratags=[(347, 7, len(tables), tables, True)])

    out["tiff"] = folder / "generic.tiff"
    with tifffile.TiffWriter(out["tiff"]) as writer:
        writer.write(rgb, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None)
        for factor in (2, 3):  # /2 is a Deep Zoom level; /3 is not (its tiles are rendered by OpenSlide)
            small = np.asarray(Image.fromarray(rgb).resize((1536 // factor, 1024 // factor), Image.Resampling.BOX))
            writer.write(small, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None,
                         subfiletype=1)

    out["edges"] = folder / "edges.tiff"  # 1000 x 700: the right and bottom tiles are partial
    tifffile.imwrite(out["edges"], rgb[:700, :1000], tile=(256, 256), compression="jpeg", photometric="rgb",
                     metadata=None)

    out["dicom_frames"] = [_jpeg_tiles(rgb, 256), _jpeg_tiles(np.asarray(Image.fromarray(rgb).resize(
        (768, 512), Image.Resampling.BOX)), 256)]
    out["dicom"] = write_dicom_wsi(folder / "dicom", [(1536, 1024, out["dicom_frames"][0]),
                                                      (768, 512, out["dicom_frames"][1])], 256)[0]

    out["deflate"] = folder / "deflate.tiff"
    tifffile.imwrite(out["deflate"], rgb, tile=(256, 256), compression="zlib", photometric="rgb", metadata=None)

    # A copy of the plain SVS with garbage in the middle of source tile (1, 1) of level 0.
    out["corrupt"] = folder / "corrupt.svs"
    shutil.copyfile(out["svs"], out["corrupt"])
    with tifffile.TiffFile(out["corrupt"]) as tif:
        page = tif.pages[0]
        index = 1 * (-(-page.imagewidth // 256)) + 1
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(out["corrupt"], "r+b") as handle:
        handle.seek(offset + count // 2)
        handle.write(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes())
    return out


@pytest.fixture
def opened(files):
    def open_(name: str) -> tiles.OpenedSlide:
        return tiles.slides.get(f"test-passthrough-{name}", files[name])

    yield open_
    tiles.slides.clear()
    tiles.encoded.clear()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)


def openslide_region(osr: openslide.AbstractSlide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """OpenSlide's pixels of a level-`level` rectangle, as RGB (the tiles are opaque)."""
    downsample = osr.level_downsamples[level]
    region = np.asarray(osr.read_region((round(x * downsample), round(y * downsample)), level, (w, h)), np.int16)
    assert region[..., 3].min() == 255
    return region[..., :3]


def raw_tile(path: Path, page_index: int, index: int) -> bytes:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page_index]
        with open(path, "rb") as handle:
            handle.seek(page.dataoffsets[index])
            return handle.read(page.databytecounts[index])


# --- passthrough: the file's bytes, OpenSlide's pixels ------------------------------------------------
@pytest.mark.parametrize("name", ["svs", "svs_tables", "tiff", "dicom"])
def test_native_tiles_are_the_files_jpeg_and_decode_to_openslides_pixels(opened, files, name):
    slide = opened(name)
    assert slide.raw is not None, slide.passthrough_note
    assert slide.osr.properties["openslide.vendor"] == {"svs": "aperio", "svs_tables": "aperio",
                                                        "tiff": "generic-tiff", "dicom": "dicom"}[name]
    assert '<Image TileSize="256" Overlap="0" Format="jpeg"' in slide.dz.get_dzi("jpeg")
    top = slide.dz.level_count - 1
    assert slide.native[top] == 0  # full resolution is served raw
    checked = 0
    for dz_level, level in slide.native.items():
        width, height = slide.osr.level_dimensions[level]
        for col, row in {(0, 0), (1, 0), (width // 256 - 1, height // 256 - 1)}:
            data = tiles.dz_tile(slide, dz_level, col, row, "jpeg")
            expected = openslide_region(slide.osr, level, col * 256, row * 256, 256, 256)
            assert np.abs(decode(data) - expected).max() <= 1, (dz_level, col, row)
            # Not re-encoded: the JPEG's scan is the file's own bytes (a DICOM frame: the whole frame).
            index = row * (-(-width // 256)) + col
            if name == "dicom":
                assert data == files["dicom_frames"][level][index]
            else:
                source = raw_tile(slide.path, {"svs": [0, 2], "svs_tables": [0], "tiff": [0, 1]}[name][level], index)
                assert source[source.index(b"\xff\xda"):] in data
            checked += 1
    assert checked >= 3


def test_abbreviated_tiles_get_the_files_tables(opened, files):
    slide = opened("svs_tables")
    data = tiles.dz_tile(slide, slide.dz.level_count - 1, 2, 1, "jpeg")
    with tifffile.TiffFile(files["svs_tables"]) as tif:
        tables = tif.pages[0].jpegtables
    source = raw_tile(files["svs_tables"], 0, 1 * 6 + 2)
    assert b"\xff\xdb" not in source and data == tables[:-2] + source[2:]  # tables (no EOI) + tile (no SOI)


def test_the_viewer_loads_the_tile_aligned_grid_over_http(files, cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    slide = ingest_slide(files["svs_tables"], part=case.parts.first(), original_filename="x.svs", move=False)
    client = client_for(cast.path1)
    meta = client.get(reverse("slide_viewer_meta", args=[slide.pk])).json()
    assert meta["dzi"] == f"{reverse('slide_dzi', args=[slide.pk])}?grid={tiles.GRID_VERSION}"
    dzi = client.get(meta["dzi"])
    assert dzi.status_code == 200 and b'TileSize="256" Overlap="0"' in dzi.content
    opened_slide = tiles.slides.get(str(slide.pk), slide.path)
    top = opened_slide.dz.level_count - 1
    url = reverse("slide_dzi_tile", args=[slide.pk, top, 3, 2, "jpeg"]) + f"?grid={tiles.GRID_VERSION}"
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    expected = openslide_region(opened_slide.osr, 0, 768, 512, 256, 256)
    assert np.abs(decode(response.content) - expected).max() <= 1
    # ETag / 304 and the cache headers are those of every tile; outsiders get nothing.
    again = client.get(url, HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304 and "private" in again["Cache-Control"]
    assert client_for(cast.outsider).get(url).status_code == 404
    tiles.slides.clear()
    tiles.encoded.clear()


# --- fallback: OpenSlide's path, still correct --------------------------------------------------------
def test_levels_that_are_not_native_fall_back_to_openslide(opened):
    slide = opened("tiff")
    assert sorted(slide.native.values()) == [0, 1]  # the /3 level is no Deep Zoom level
    top = slide.dz.level_count - 1
    for dz_level in (top - 2, top - 3):  # /4 and /8 are drawn from the /3 level by OpenSlide
        assert dz_level not in slide.native
        data = tiles.dz_tile(slide, dz_level, 0, 0, "jpeg")
        assert data == tiles.encode(slide.dz.get_tile(dz_level, (0, 0)), "jpeg")
    # PNG is always rendered.
    png = tiles.dz_tile(slide, top, 1, 1, "png")
    assert png[:4] == b"\x89PNG"
    assert np.abs(decode(png) - openslide_region(slide.osr, 0, 256, 256, 256, 256)).max() == 0


def test_partial_edge_tiles_fall_back_with_their_true_size(opened):
    slide = opened("edges")
    assert slide.raw is not None
    top = slide.dz.level_count - 1
    cols, rows = slide.dz.level_tiles[top]
    assert (cols, rows) == (4, 3)
    inner = tiles.dz_tile(slide, top, 1, 1, "jpeg")
    assert np.abs(decode(inner) - openslide_region(slide.osr, 0, 256, 256, 256, 256)).max() <= 1
    for col, row, size in [(3, 0, (232, 256)), (0, 2, (256, 188)), (3, 2, (232, 188))]:
        data = tiles.dz_tile(slide, top, col, row, "jpeg")
        assert Image.open(io.BytesIO(data)).size == size  # not the padded 256 x 256 source tile
        assert data == tiles.encode(slide.dz.get_tile(top, (col, row)), "jpeg")


def test_other_compression_keeps_the_openslide_grid(opened):
    slide = opened("deflate")
    assert slide.raw is None and "not a JPEG-tiled" in slide.passthrough_note
    assert 'TileSize="254" Overlap="1"' in slide.dz.get_dzi("jpeg")
    top = slide.dz.level_count - 1
    assert tiles.dz_tile(slide, top, 1, 1, "jpeg") == tiles.encode(slide.dz.get_tile(top, (1, 1)), "jpeg")


# --- corrupt tiles ------------------------------------------------------------------------------------
def test_a_corrupt_source_tile_is_a_404_with_a_message(files, cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    slide = ingest_slide(files["corrupt"], part=case.parts.first(), original_filename="c.svs", move=False)
    client = client_for(cast.path1)
    opened_slide = tiles.slides.get(str(slide.pk), slide.path)
    assert opened_slide.raw is not None  # the check tile (the middle one) is sound
    top = opened_slide.dz.level_count - 1
    bad = client.get(reverse("slide_dzi_tile", args=[slide.pk, top, 1, 1, "jpeg"]))
    assert bad.status_code == 404 and b"Source tile 1,1 of level 0" in bad.content
    assert bad["Content-Type"].startswith("text/plain")
    # The half-scale tile over it too (it reads source tiles 0..1 x 0..1).
    half = client.get(reverse("slide_dzi_tile", args=[slide.pk, top - 1, 0, 0, "jpeg"]))
    assert half.status_code == 404 and b"Source tile 1,1 of level 0" in half.content
    good = client.get(reverse("slide_dzi_tile", args=[slide.pk, top, 2, 1, "jpeg"]))
    assert good.status_code == 200 and good.content[:2] == b"\xff\xd8"
    tiles.slides.clear()
    tiles.encoded.clear()


def test_complete_jpeg_refuses_broken_streams(files):
    source = raw_tile(files["svs"], 0, 0)
    assert passthrough.complete_jpeg(b"", source, 256, 3) == source  # no ICC, nothing to drop
    broken = {
        "no start-of-image": b"\x00" * len(source),
        "truncated": source[: len(source) // 2],
        "corrupt entropy": source[:-200] + b"\xff\xc4" + source[-198:],
        "not 256x256": passthrough.complete_jpeg(b"", source, 256, 3).replace(
            b"\xff\xc0\x00\x11\x08\x01\x00\x01\x00", b"\xff\xc0\x00\x11\x08\x00\x80\x01\x00"),
    }
    for what, data in broken.items():
        with pytest.raises(passthrough.CorruptTile):
            passthrough.complete_jpeg(b"", data, 256, 3)
        assert what


# --- levels between a /4 pyramid's: half-scale decode of the source tiles ----------------------------
def test_levels_at_twice_a_native_downsample_are_decoded_at_half_scale(opened, files):
    slide = opened("svs")
    top = slide.dz.level_count - 1
    assert slide.half == {top - 1: 0, top - 3: 1} and top - 1 not in slide.native
    image = slide.dz.get_tile(top - 1, (2, 1))  # OpenSlide's path: full decode + Lanczos, then JPEG q75
    reference, current = np.asarray(image, np.int16), decode(tiles.encode(image, "jpeg"))
    ours = decode(tiles.dz_tile(slide, top - 1, 2, 1, "jpeg"))
    assert ours.shape == reference.shape == (256, 256, 3)
    # The same picture by another filter (libjpeg's scaled IDCT): it departs from OpenSlide's pixels about
    # as much as the current path's own JPEG re-encoding does (3.3 vs 3.1 levels on this noisy picture).
    assert np.abs(ours - reference).mean() <= 1.5 * np.abs(current - reference).mean()
    # Its four source tiles, decoded whole by OpenSlide and box-averaged, agree as closely.
    whole = openslide_region(slide.osr, 0, 1024, 512, 512, 512).reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(ours - whole).mean() <= 1.5 * np.abs(current - reference).mean()
    # PNG stays OpenSlide's exact pixels.
    png = tiles.dz_tile(slide, top - 1, 2, 1, "png")
    assert png == tiles.encode(image, "png")
    # A tile that does not cover four whole source tiles is OpenSlide's (the right edge of the edges file).
    edges = opened("edges")
    assert tiles.dz_tile(edges, edges.dz.level_count - 2, 1, 0, "jpeg") == tiles.encode(
        edges.dz.get_tile(edges.dz.level_count - 2, (1, 0)), "jpeg")
    assert tiles.dz_tile(edges, edges.dz.level_count - 2, 0, 0, "jpeg") != tiles.encode(
        edges.dz.get_tile(edges.dz.level_count - 2, (0, 0)), "jpeg")


def test_a_dicom_series_uploaded_as_a_folder_serves_its_frames(files, cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    slide = ingest_slide(files["dicom"].parent, part=case.parts.first(), original_filename="scan", move=False)
    client = client_for(cast.path1)
    dzi = client.get(reverse("slide_dzi", args=[slide.pk]))
    assert dzi.status_code == 200 and b'TileSize="256" Overlap="0"' in dzi.content
    top = tiles.slides.get(str(slide.pk), slide.path).dz.level_count - 1
    response = client.get(reverse("slide_dzi_tile", args=[slide.pk, top, 4, 2, "jpeg"]))
    assert response.status_code == 200 and response.content == files["dicom_frames"][0][2 * 6 + 4]
    tiles.slides.clear()
    tiles.encoded.clear()
