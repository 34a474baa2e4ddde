"""Tile serving benchmark: our Deep Zoom endpoint over HTTP against OpenSlide's own reference, same run.

    .venv/bin/python bench/tiles.py [--size 50000] [--tiles 300] [--threads 4] [--formats svs,tiff,dicom]

1. A synthetic Aperio slide of size x size pixels (0.25 µm/px, 40x, 256 px JPEG tiles, pyramid /4 /16 /64)
   is written once under var/bench/ (streamed tile by tile); a generic tiled TIFF (no Aperio description,
   JPEGTables-free YCbCr tiles, levels as reduced-resolution images) is made from its tiles, byte for byte.
2. A bench database (`pathalign_bench` on the embedded server, or DATABASE_URL) gets a lab admin, a case
   and a Slide row per file, and a logged-in session.
3. gunicorn serves the real app on 127.0.0.1 (one process, gthread, DEBUG off).
4. Per file, random tile addresses in tissue (60 % full resolution, 25 % one Deep Zoom level down, 15 % two
   down), each on its own grid:
   - reference: openslide-python's examples/deepzoom path in-process, no HTTP: a fresh OpenSlide +
     DeepZoomGenerator(254, 1, limit_bounds=True), get_tile() then JPEG quality 75;
   - cold: each tile of the grid the server's DZI descriptor names (tile-aligned where the file allows it)
     requested once over HTTP (not in our encoded-tile cache; slide already open);
   - warm: the same tiles again (encoded-tile cache hits).
   Reference and cold requests alternate tile by tile, so machine load affects both alike.
   Then tiles per second with --threads concurrent keep-alive connections, cold and warm (the reference's
   tiles/s: 1000 / its mean ms, one thread).
Targets (issue #18): cold p95 <= 0.5 x reference p95; cold tiles/s >= 2 x reference's; warm p95 < 10 ms.

A DICOM WSI series (VL Whole Slide Microscopy, one file per level, TILED_FULL, JPEG baseline frames) is made
from the same tiles the same way (`--formats svs,tiff,dicom`, the default).
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
sys.path.insert(0, str(ROOT))
from bench_server import bench_database, migrate_as_owner, wait_until_serving  # noqa: E402 - bench/ is the script directory


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(label: str, seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    result = {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "mean_ms": statistics.fmean(ms)}
    print(f"  {label:<34} n={result['n']:<5} p50 {result['p50_ms']:7.2f} ms   p95 {result['p95_ms']:7.2f} ms   "
          f"mean {result['mean_ms']:7.2f} ms")
    return result


# --- the slide --------------------------------------------------------------------------------------
def ensure_slide(size: int, seed: int) -> Path:
    path = BENCH_DIR / f"synthetic-{size}x{size}-s{seed}.svs"
    if path.exists():
        return path
    BENCH_DIR.mkdir(parents=True, exist_ok=True)  # a fresh clone has no var/ yet
    try:
        from inference.synthetic.wsi import write_large_synthetic_slide  # another engineer's, when present
    except ImportError:
        sys.path.insert(0, str(ROOT / "bench"))
        from large_slide import write_large_slide as write_large_synthetic_slide
    print(f"writing {path} (once; cached for later runs)")
    write_large_synthetic_slide(path, size, size, seed, mpp=0.25)
    return path


def warm_page_cache(path: Path) -> None:
    # Both the reference and the server read the file from the OS page cache, not from disk.
    for name in sorted(path.parent.glob("*.dcm")) if path.suffix == ".dcm" else [path]:
        with open(name, "rb") as handle:
            while handle.read(64 * 1024 * 1024):
                pass


def ensure_tiff(svs: Path) -> Path:
    """A generic tiled TIFF with the SVS's own JPEG tiles (copied, not re-encoded), written once."""
    import numpy as np
    import tifffile

    path = svs.with_name(f"{svs.stem}-generic.tiff")
    if path.exists():
        return path
    print(f"writing {path} (once; cached for later runs)")
    partial = path.with_name(path.name + ".partial")
    with tifffile.TiffFile(svs) as source, tifffile.TiffWriter(partial, bigtiff=True) as target:
        handle = source.filehandle
        for index, page in enumerate(p for p in source.pages if p.is_tiled):
            def segments(page=page):
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                    handle.seek(offset)
                    yield handle.read(count)

            tables = page.jpegtables
            target.write(segments(), shape=page.shape, dtype=np.uint8, tile=(page.tilelength, page.tilewidth),
                         compression="jpeg", photometric="ycbcr", subsampling=page.subsampling, metadata=None,
                         subfiletype=1 if index else 0,
                         resolution=(40000 / 2 ** (2 * index), 40000 / 2 ** (2 * index)), resolutionunit=3,
                         extratags=[(347, 7, len(tables), tables, True)] if tables else [])
    os.replace(partial, path)
    return path


def ensure_dicom(svs: Path) -> Path:
    """A DICOM WSI series (a folder, one instance per level) with the SVS's own JPEG tiles as its frames."""
    import tifffile
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage, generate_uid

    folder = svs.with_name(f"{svs.stem}-dicom")
    if (folder / "level-0.dcm").exists():
        return folder / "level-0.dcm"
    print(f"writing {folder}/ (once; cached for later runs)")
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        return item

    with tifffile.TiffFile(svs) as source:
        handle = source.filehandle
        pages = [p for p in source.pages if p.is_tiled]
        for index, page in enumerate(pages):
            frames = []
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                handle.seek(offset)
                frames.append(handle.read(count))
            assert not page.jpegtables, "the bench SVS carries its tables in every tile"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
            meta.MediaStorageSOPInstanceUID = uid = generate_uid()
            meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = VLWholeSlideMicroscopyImageStorage, uid
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
            ds.Modality, ds.Manufacturer, ds.PatientName, ds.PatientID = "SM", "Synthetic", "Bench", "BENCH-1"
            ds.ContainerIdentifier, ds.SeriesNumber, ds.InstanceNumber = "BENCH-SLIDE-1", 1, index + 1
            ds.ImageType = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if index == 0
                            else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
            ds.DimensionOrganizationType = "TILED_FULL"
            ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = page.imagewidth, page.imagelength
            ds.TotalPixelMatrixFocalPlanes = 1
            ds.Columns, ds.Rows, ds.NumberOfFrames = page.tilewidth, page.tilelength, len(frames)
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.LossyImageCompression, ds.BurnedInAnnotation, ds.SpecimenLabelInImage = "01", "NO", "NO"
            ds.FocusMethod, ds.ExtendedDepthOfField = "AUTO", "NO"
            spacing = 0.25 * pages[0].imagewidth / page.imagewidth / 1000  # mm
            measures = Dataset()
            measures.PixelSpacing, measures.SliceThickness = [spacing, spacing], 0.001
            shared = Dataset()
            shared.PixelMeasuresSequence = [measures]
            ds.SharedFunctionalGroupsSequence = [shared]
            ds.ImagedVolumeWidth = page.imagewidth * spacing
            ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = page.imagelength * spacing, 0.001
            origin = Dataset()
            origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 0
            ds.TotalPixelMatrixOriginSequence = [origin]
            optical = Dataset()
            optical.OpticalPathIdentifier = "1"
            optical.IlluminationTypeCodeSequence = [code("111744", "DCM", "Brightfield illumination")]
            optical.IlluminationColorCodeSequence = [code("414298005", "SCT", "Full Spectrum")]
            ds.OpticalPathSequence, ds.NumberOfOpticalPaths = [optical], 1
            ds.PixelData = encapsulate(frames, has_bot=len(frames) < 2**20)
            ds["PixelData"].VR = "OB"
            ds.save_as(partial / f"level-{index}.dcm", enforce_file_format=True)
    os.replace(partial, folder)
    return folder / "level-0.dcm"


def pick_tiles(path: Path, count: int, seed: int, tile_size: int = 254, overlap: int = 1) -> list[tuple[int, int, int]]:
    """Distinct tile addresses in tissue: 60% full resolution, 25% one level down, 15% two down."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    osr = openslide.OpenSlide(str(path))
    dz = DeepZoomGenerator(osr, tile_size=tile_size, overlap=overlap, limit_bounds=True)
    top = dz.level_count - 1
    rng = random.Random(seed)
    chosen: set[tuple[int, int, int]] = set()
    plan = [(top, 0.60), (top - 1, 0.25), (top - 2, 0.15)]
    for level, share in plan:
        cols, rows = dz.level_tiles[level]
        # The central tissue piece covers the middle of the slide.
        candidates = [(level, col, row) for col in range(int(cols * 0.3), max(int(cols * 0.7), int(cols * 0.3) + 1))
                      for row in range(int(rows * 0.35), max(int(rows * 0.65), int(rows * 0.35) + 1))]
        chosen.update(rng.sample(candidates, min(len(candidates), round(count * share))))
    tiles = sorted(chosen)
    rng.shuffle(tiles)
    osr.close()
    return tiles


# --- OpenSlide's reference ----------------------------------------------------------------------------
class Reference:
    """openslide-python's examples/deepzoom tile path, in-process: get_tile() then JPEG quality 75."""

    def __init__(self, path: Path) -> None:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.osr = openslide.OpenSlide(str(path))
        self.dz = DeepZoomGenerator(self.osr, tile_size=254, overlap=1, limit_bounds=True)

    def time_tile(self, level: int, col: int, row: int) -> float:
        started = time.perf_counter()
        tile = self.dz.get_tile(level, (col, row))
        buffer = io.BytesIO()
        tile.save(buffer, "jpeg", quality=75)
        return time.perf_counter() - started


# --- the app ------------------------------------------------------------------------------------------
def bench_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PATHALIGN_DB_NAME", "pathalign_bench")
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DJANGO_DEBUG="0",
        PATHALIGN_SLIDE_STORE=str(BENCH_DIR / "store"),
        PATHALIGN_SLIDE_DROP=str(BENCH_DIR / "dropbox"),
        PATHALIGN_LOG_LEVEL="WARNING",
        PATHALIGN_AXES_ENABLED="0",
    )
    return env


def prepare_app(paths: list[Path]) -> tuple[list[str], str]:
    """Migrate the bench database, register the slides, log a user in. Returns (slide ids, cookie header)."""
    os.environ.update(bench_env())
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client

    from webapp.accounts.models import User
    from webapp.cases.models import Case, Part
    from webapp.slides.ingest import inspect_slide
    from webapp.slides.models import Slide

    migrate_as_owner()
    store = Path(settings.SLIDE_STORE_DIR)
    user = User.objects.filter(username="bench").first() or User.objects.create_user(
        "bench", password=None, role="lab_admin")  # no password: only force_login here
    case = Case.objects.get_or_create(accession_number="B26-00001", defaults={"patient_pseudonym": "BENCH"})[0]
    part = Part.objects.get_or_create(case=case, label="A", defaults={"site": "Bench"})[0]
    ids = []
    for path in paths:
        # The store holds the file by reference (no 1 GB copy); a DICOM series by its folder.
        target = path.parent if path.suffix == ".dcm" else path
        folder_link = store / "bench" / target.name
        folder_link.parent.mkdir(parents=True, exist_ok=True)
        if not folder_link.exists():
            folder_link.symlink_to(target.resolve())
        link = folder_link / path.name if path.suffix == ".dcm" else folder_link
        slide = Slide.objects.filter(file_path=str(link.relative_to(store))).first()
        if slide is None:
            metadata, handle = inspect_slide(link)
            handle.close()
            slide = Slide.objects.create(part=part, file_path=str(link.relative_to(store)),
                                         original_filename=path.name, **metadata.__dict__)
        ids.append(str(slide.pk))
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return ids, f"{name}={client.cookies[name].value}"


def start_server(port: int, threads: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "gunicorn"), "webapp.wsgi:application", "-b", f"127.0.0.1:{port}",
         "-w", "1", "-k", os.environ.get("BENCH_WORKER_CLASS", "gthread"), "--threads", str(max(threads, 4)),
         "--keep-alive", "30",
         "--log-level", "warning"],
        cwd=ROOT, env=bench_env(),
    )
    return wait_until_serving(process, port)


class Fetcher:
    """One keep-alive connection carrying the session cookie."""

    def __init__(self, port: int, cookie: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Cookie": cookie, "Accept": "image/jpeg"}

        self.server_ms: list[float] = []

    def get(self, url: str) -> tuple[int, bytes]:
        self.connection.request("GET", url, headers=self.headers)
        response = self.connection.getresponse()
        # "tile;dur=0.4" from the tile view, followed by ", fastpath" when the fast path answered.
        for metric in response.getheader("Server-Timing", "").split(","):
            if metric.strip().startswith("tile;dur="):
                self.server_ms.append(float(metric.strip().split("=", 1)[1]))
        return response.status, response.read()


def tile_url(slide_id: str, level: int, col: int, row: int) -> str:
    return f"/slides/{slide_id}/dzi/slide_files/{level}/{col}_{row}.jpeg"


def timed_pass(fetcher: Fetcher, slide_id: str, tiles) -> list[float]:
    timings = []
    for level, col, row in tiles:
        started = time.perf_counter()
        status, body = fetcher.get(tile_url(slide_id, level, col, row))
        timings.append(time.perf_counter() - started)
        if status != 200 or not body:
            raise RuntimeError(f"tile {level}/{col}_{row}: HTTP {status}")
    return timings


def throughput(port: int, cookie: str, slide_id: str, tiles, threads: int) -> float:
    chunks = [tiles[i::threads] for i in range(threads)]
    errors: list[str] = []

    def work(chunk) -> None:
        try:
            timed_pass(Fetcher(port, cookie), slide_id, chunk)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(str(exc))

    workers = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    return len(tiles) / elapsed


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}, {platform.system()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=50_000, help="slide width and height in pixels")
    parser.add_argument("--tiles", type=int, default=300, help="distinct tiles per timed pass")
    parser.add_argument("--threads", type=int, default=4, help="concurrent connections for tiles/s")
    parser.add_argument("--formats", default="svs,tiff,dicom", help="which files: svs, tiff, dicom (comma-separated)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "tiles-latest.json")
    args = parser.parse_args()

    os.environ.update(bench_env())  # before anything imports the settings, which read it once
    with bench_database(os.environ["PATHALIGN_DB_NAME"]):
        return run(args)


def dzi_grid(fetcher: Fetcher, slide_id: str) -> tuple[int, int]:
    status, xml = fetcher.get(f"/slides/{slide_id}/dzi/slide.dzi")  # opens the slide, caches the grant
    assert status == 200, status
    text = xml.decode()
    return int(text.split('TileSize="')[1].split('"')[0]), int(text.split('Overlap="')[1].split('"')[0])


def by_level(label: str, tiles, seconds: list[float]) -> None:
    levels: dict[int, list[float]] = {}
    for (level, _col, _row), value in zip(tiles, seconds, strict=True):
        levels.setdefault(level, []).append(value * 1000)
    print(f"    {label:<10}" + "   ".join(f"level {level}: p50 {percentile(ms, 50):6.2f} p95 {percentile(ms, 95):6.2f} ms"
                                       for level, ms in sorted(levels.items(), reverse=True)))


def bench_file(args, name: str, path: Path, slide_id: str, port: int, cookie: str) -> dict:
    fetcher = Fetcher(port, cookie)
    tile_size, overlap = dzi_grid(fetcher, slide_id)
    ref_tiles = pick_tiles(path, args.tiles, args.seed)
    tiles = pick_tiles(path, args.tiles, args.seed, tile_size, overlap)
    extra = [t for t in pick_tiles(path, args.tiles * 2, args.seed + 1, tile_size, overlap)
             if t not in set(tiles)][: args.tiles]
    warm_page_cache(path)
    print(f"\n== {name}: {path.name}, {args.size}x{args.size}; server grid {tile_size} px, overlap {overlap}; "
          f"{len(tiles)} tiles per pass")
    reference = Reference(path)
    # Reference and cold HTTP alternate tile by tile (each with its own OpenSlide handle and caches),
    # so both see the same load on a shared machine.
    ref_times, cold_times = [], []
    for ref_tile, tile in zip(ref_tiles, tiles, strict=False):
        ref_times.append(reference.time_tile(*ref_tile))
        cold_times.append(timed_pass(fetcher, slide_id, [tile])[0])
    server_render = list(fetcher.server_ms)
    print("OpenSlide reference (in-process get_tile + JPEG q75, no HTTP, 254 px + overlap 1):")
    ref = summary("reference", ref_times)
    print("Our endpoint over HTTP (gunicorn gthread, keep-alive, logged-in session):")
    cold = summary("cold (not in the tile cache)", cold_times)
    if server_render:
        summary("  of which read + encode in server", [ms / 1000 for ms in server_render[-len(cold_times):]])
    by_level("reference", ref_tiles[:len(ref_times)], ref_times)
    by_level("cold", tiles[:len(cold_times)], cold_times)
    warm = summary("warm (tile cache hit)", timed_pass(fetcher, slide_id, tiles))
    cold_tps = throughput(port, cookie, slide_id, extra, args.threads)
    warm_tps = throughput(port, cookie, slide_id, extra, args.threads)
    ref_tps = 1000 / ref["mean_ms"]
    print(f"Tiles per second: reference (1 thread) {ref_tps:.0f}; HTTP cold {cold_tps:.0f}, warm {warm_tps:.0f} "
          f"({args.threads} connections)")
    checks = {
        "cold_p95": (cold["p95_ms"] <= 0.5 * ref["p95_ms"],
                     f"cold p95 <= 0.5 x {ref['p95_ms']:.2f} = {0.5 * ref['p95_ms']:.2f} ms: {cold['p95_ms']:.2f} ms"),
        "cold_tps": (cold_tps >= 2 * ref_tps, f"cold tiles/s >= 2 x {ref_tps:.0f} = {2 * ref_tps:.0f}: {cold_tps:.0f}"),
        "warm_p95": (warm["p95_ms"] < 10, f"warm p95 < 10 ms: {warm['p95_ms']:.2f} ms"),
    }
    print(f"Ratios: cold/reference p50 {cold['p50_ms'] / ref['p50_ms']:.2f}x, p95 {cold['p95_ms'] / ref['p95_ms']:.2f}x; "
          f"cold tiles/s {cold_tps / ref_tps:.2f}x the reference's")
    for ok, text in checks.values():
        print(f"Target {text} -> {'PASS' if ok else 'FAIL'}")
    return {"file": path.name, "grid": [tile_size, overlap], "reference": ref, "cold": cold, "warm": warm,
            "tiles_per_s": {"reference": ref_tps, "cold": cold_tps, "warm": warm_tps},
            "pass": {key: ok for key, (ok, _text) in checks.items()}}


def run(args: argparse.Namespace) -> int:
    svs = ensure_slide(args.size, args.seed)
    files = {"svs": ("Aperio SVS", lambda: svs), "tiff": ("generic tiled TIFF", lambda: ensure_tiff(svs)),
             "dicom": ("DICOM WSI", lambda: ensure_dicom(svs))}
    chosen = [name.strip() for name in args.formats.split(",") if name.strip()]
    paths = {name: files[name][1]() for name in chosen}
    ids, cookie = prepare_app([paths[name] for name in chosen])
    load_before = os.getloadavg()
    print(f"machine: {machine()}; load average {load_before[0]:.2f}")
    server = start_server(args.port, args.threads)
    results = {}
    try:
        for name, slide_id in zip(chosen, ids, strict=True):
            results[name] = bench_file(args, files[name][0], paths[name], slide_id, args.port, cookie)
    finally:
        server.terminate()
        server.wait(timeout=30)
    load_after = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    passed = all(all(result["pass"].values()) for result in results.values())
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "size": args.size,
        "tiles": args.tiles, "threads": args.threads, "load_average": [load_before[0], load_after[0]],
        "files": results, "pass": passed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
