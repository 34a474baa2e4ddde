"""Slides enter by upload or drop folder; bad files are refused clearly and leave nothing behind."""
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from webapp.slides.models import Slide


def store_files() -> set[Path]:
    return {p for p in Path(settings.SLIDE_STORE_DIR).rglob("*") if p.is_file()}


def upload(client, case, path: Path, name: str | None = None, **fields):
    part = case.parts.get()
    with open(path, "rb") as handle:
        data = SimpleUploadedFile(name or path.name, handle.read())
    return client.post(reverse("slide_upload", args=[case.pk, part.pk]),
                       {"file": data, "stain": "H&E", "block_label": "1", **fields})


@pytest.fixture
def admin_case(cast, case_factory, client_for):
    return client_for(cast.admin), case_factory(assigned_to=cast.path1)


def test_upload_stores_slide_with_metadata_and_thumbnail(admin_case, good_slide):
    client, case = admin_case
    response = upload(client, case, good_slide, name="Patient scan 001.svs")
    assert response.status_code == 201, response.content
    slide = Slide.objects.get()
    assert (slide.width, slide.height, slide.vendor) == (3072, 2048, "aperio")
    assert slide.mpp_x == pytest.approx(0.5) and slide.objective_power == 20
    assert slide.level_count == 2 and slide.level_dimensions[1] == [768, 512]
    assert set(slide.associated_images) >= {"label", "macro"}
    assert slide.path.exists() and slide.thumbnail_path.exists()
    # The stored name is generated; the uploaded name is kept only for display.
    assert "Patient" not in slide.file_path and slide.original_filename == "Patient scan 001.svs"
    thumb = client.get(reverse("slide_thumbnail", args=[slide.pk]))
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("text_as_svs", "not a whole-slide image format"),
        ("truncated_slide", "damaged"),
        ("empty_slide", "empty"),
    ],
)
def test_bad_files_are_refused_and_leave_nothing(admin_case, request, fixture, message):
    client, case = admin_case
    before = store_files()
    response = upload(client, case, request.getfixturevalue(fixture))
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert Slide.objects.count() == 0 and store_files() == before
    assert not any(Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir())


def test_path_traversal_name_is_harmless(admin_case, good_slide):
    client, case = admin_case
    response = upload(client, case, good_slide, name="../../../../etc/evil.svs")
    assert response.status_code == 201
    slide = Slide.objects.get()
    assert slide.original_filename == "evil.svs"
    assert slide.path.resolve().is_relative_to(Path(settings.SLIDE_STORE_DIR).resolve())
    assert not Path("/etc/evil.svs").exists()


def test_wrong_extension_refused(admin_case, good_slide):
    client, case = admin_case
    response = upload(client, case, good_slide, name="slide.exe")
    assert response.status_code == 400 and "not a slide format" in response.json()["error"]
    assert Slide.objects.count() == 0


def test_oversized_upload_refused(admin_case, tmp_path, settings):
    settings.SLIDE_UPLOAD_MAX_BYTES = 200_000
    client, case = admin_case
    big = tmp_path / "big.svs"
    big.write_bytes(b"\0" * 3_000_000)
    before = store_files()
    response = upload(client, case, big)
    assert response.status_code == 413, response.content
    assert "larger than the upload limit" in response.json()["error"]
    assert Slide.objects.count() == 0 and store_files() == before
    assert not any(Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir())


def test_upload_needs_lab_admin_and_visibility(cast, case_factory, client_for, good_slide):
    case = case_factory(assigned_to=cast.path1)
    assert upload(client_for(cast.path1), case, good_slide).status_code == 403
    assert upload(client_for(cast.outsider), case, good_slide).status_code == 404
    assert Slide.objects.count() == 0


def test_upload_requires_csrf(cast, case_factory, good_slide):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.admin)
    case = case_factory()
    assert upload(client, case, good_slide).status_code == 403


def test_drop_folder_import_by_name(cast, case_factory, client_for, good_slide, text_as_svs):
    case = case_factory(accession_number="S26-00042")
    drop = Path(settings.SLIDE_DROP_DIR)
    (drop / "S26-00042_A_2_HE.svs").write_bytes(good_slide.read_bytes())
    (drop / "S26-00042_A_3_HE.svs").write_bytes(text_as_svs.read_bytes())
    (drop / "unmatched-scan.svs").write_bytes(good_slide.read_bytes())
    page = client_for(cast.admin).get(reverse("dropbox_list")).content.decode()
    assert "S26-00042_A_2_HE.svs" in page and "unmatched-scan.svs" in page
    with pytest.raises(CommandError, match="1 file"):
        call_command("import_slides")
    slide = Slide.objects.get()
    assert slide.part == case.parts.get() and slide.block_label == "2" and slide.stain == "H&E"
    # The refused file stays in the drop folder for a person to look at; the matched one moved.
    assert (drop / "S26-00042_A_3_HE.svs").exists() and not (drop / "S26-00042_A_2_HE.svs").exists()
    response = client_for(cast.admin).post(reverse("dropbox_import"), {
        "filename": "unmatched-scan.svs", "part": case.parts.get().pk, "stain": "PAS", "block_label": "4"})
    assert response.status_code == 302 and Slide.objects.filter(stain="PAS").exists()
    response = client_for(cast.admin).post(reverse("dropbox_import"), {
        "filename": "../../etc/passwd", "part": case.parts.get().pk, "stain": "HE"})
    assert Slide.objects.count() == 2
    for name in ("S26-00042_A_3_HE.svs",):
        (drop / name).unlink()


def test_import_command_with_paths_copies(cast, case_factory, good_slide):
    case_factory(accession_number="S26-00077", parts=("A", "B"))
    call_command("import_slides", str(good_slide), "--case", "S26-00077", "--part", "B", "--stain", "CK7")
    assert Slide.objects.get().part.label == "B" and good_slide.exists()
