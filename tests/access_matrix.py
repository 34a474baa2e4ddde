"""Who gets what, for every URL of the app: the expected HTTP status per role and method.

`tests/test_trust_access_matrix.py` walks Django's URL resolver, so a new URL that is not listed here fails
the suite. To add one: read its view, then add `"<url name>": {"GET": ..., "POST": ...}` below using the
helpers (or a dict of role -> status). Path parameters are filled from the shared world (see PARAMS):
a case assigned to `assigned` (dr_one) with part A and one slide; `other` (dr_two) has a case of their own.

Roles: anonymous, admin (lab admin), assigned (pathologist of the case), other (another pathologist),
evaluator, outsider (a pathologist with no cases). POST requests carry an empty form (CSRF is not enforced
by the test client; `test_trust_audit` covers CSRF), so a permitted POST often answers 400 or re-renders.
"""
from __future__ import annotations

ROLES = ("anonymous", "admin", "assigned", "other", "evaluator", "outsider")
LOGIN = 302  # anonymous users are sent to the login page
HIDDEN = 404  # the object exists but this user may not know it does (webapp.cases.access)


def expect(anonymous: int = LOGIN, *, admin: int, assigned: int, other: int, evaluator: int,
           outsider: int) -> dict[str, int]:
    return {"anonymous": anonymous, "admin": admin, "assigned": assigned, "other": other,
            "evaluator": evaluator, "outsider": outsider}


def everyone(status: int) -> dict[str, int]:
    """Public: the same answer for every role, anonymous included."""
    return dict.fromkeys(ROLES, status)


def any_user(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    return expect(anonymous, admin=status, assigned=status, other=status, evaluator=status, outsider=status)


def admin_only(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    return expect(anonymous, admin=status, assigned=403, other=403, evaluator=403, outsider=403)


def case_read(status: int, anonymous: int = LOGIN, admin: int | None = None) -> dict[str, int]:
    """Case data: lab admins and the assigned pathologist; everyone else is told it does not exist."""
    return expect(anonymous, admin=status if admin is None else admin, assigned=status, other=HIDDEN,
                  evaluator=HIDDEN, outsider=HIDDEN)


def case_write(status: int, anonymous: int = LOGIN) -> dict[str, int]:
    """Accessioning changes: lab admins only; the assigned pathologist may read, so 403, others 404."""
    return expect(anonymous, admin=status, assigned=403, other=HIDDEN, evaluator=HIDDEN, outsider=HIDDEN)


# URL namespaces not walked, with the reason. The Django admin is Django's own, reachable by superusers
# only (webapp.accounts.admin); test_cases_access checks that a lab admin is sent to its login.
SKIPPED_NAMESPACES = {"admin": "Django's admin site: superusers only, tested in test_cases_access"}

# Path parameters that name a resource are filled from the world fixture; URLs with other parameters
# (tile coordinates, formats) give them in their entry's "kwargs".
MATRIX: dict[str, dict] = {
    # --- site and accounts
    "healthz": {"GET": everyone(200)},
    "favicon": {"GET": everyone(200)},
    "login": {"GET": any_user(302, anonymous=200)},  # signed-in users are sent on to the app
    "logout": {"GET": everyone(405), "POST": everyone(302)},
    "password_change": {"GET": any_user(200)},
    "password_change_done": {"GET": any_user(200)},
    "user_list": {"GET": admin_only(200)},
    "user_create": {"GET": admin_only(200), "POST": admin_only(200)},
    "user_edit": {"GET": admin_only(200), "POST": admin_only(200)},
    # --- cases
    "home": {"GET": expect(admin=302, assigned=302, other=302, evaluator=200, outsider=302)},
    "worklist": {"GET": any_user(200)},
    "case_list": {"GET": any_user(200)},
    "case_create": {"GET": admin_only(200), "POST": admin_only(200)},
    "case_detail": {"GET": case_read(200)},
    "case_edit": {"GET": case_write(200), "POST": case_write(200)},
    "case_assign": {"GET": any_user(405), "POST": case_write(302)},
    "part_create": {"GET": case_write(200), "POST": case_write(200)},
    "part_edit": {"GET": case_write(200), "POST": case_write(200)},
    "specimen_rules": {"GET": admin_only(200), "POST": admin_only(200)},  # empty POST: "choose an action"
    # --- slides: upload, thumbnails, drop folder
    "slide_upload": {"GET": any_user(405), "POST": case_write(400)},
    "slide_thumbnail": {"GET": case_read(200)},
    "dropbox_list": {"GET": admin_only(200)},
    "dropbox_import": {"GET": admin_only(405), "POST": admin_only(302)},
    "dropbox_import_matched": {"GET": admin_only(405), "POST": admin_only(302)},
    # --- audit
    "audit_log": {"GET": admin_only(200), "POST": admin_only(302)},
    "audit_export_csv": {"GET": admin_only(200)},
    "audit_export_json": {"GET": admin_only(200)},
    "audit_case_access_lookup": {"GET": admin_only(200), "POST": admin_only(200)},
    "audit_case_access": {"GET": admin_only(200)},
    # --- viewer (webapp.slides.viewer_views): pixels need the case (or an evaluation grant in the session);
    # anonymous requests for pixels get 404 rather than a login redirect (an image tag cannot follow one).
    "case_viewer": {"GET": case_read(200), "POST": everyone(405)},
    "slide_deidentified_viewer": {"GET": case_read(200), "POST": everyone(405)},
    "slide_viewer_meta": {"GET": case_read(200, anonymous=404), "POST": everyone(405)},
    "slide_associated": {"GET": case_read(200, anonymous=404), "POST": everyone(405),
                         "kwargs": {"name": "label"}},
    "slide_dzi": {"GET": case_read(200, anonymous=404), "POST": everyone(405)},
    "slide_dzi_tile": {"GET": case_read(200, anonymous=404), "POST": everyone(405),
                       "kwargs": {"level": 0, "col": 0, "row": 0, "fmt": "jpeg"}},
    "slide_iiif_base": {"GET": case_read(303, anonymous=404), "POST": everyone(405)},
    "slide_iiif_info": {"GET": case_read(200, anonymous=404), "POST": everyone(405)},
    "slide_iiif_image": {"GET": case_read(200, anonymous=404), "POST": everyone(405),
                         "kwargs": {"region": "full", "size": "max", "rotation": "0",
                                    "quality_format": "default.jpg"}},
    "slide_overlays": {"GET": case_read(200, anonymous=404), "POST": everyone(405)},
    # No overlay is computed in the world, so even permitted users get 404 here (UNVERIFIED: permitted path).
    "slide_overlay": {"GET": everyone(404), "POST": everyone(405), "kwargs": {"name": "attention"}},
    # Setting a slide's um/px (issue #14) is the lab admins' (a role page: 403); the world's POST sends no
    # value, so the admin's answer is the 400 "not a plausible resolution" (the permitted path is #14's test).
    "slide_set_mpp": {"GET": everyone(405), "POST": admin_only(400)},
    # Annotations (issue #17): readers of the case read, lab admins and the assigned pathologist write
    # (webapp.slides.annotations.can_annotate); evaluators and outsiders get 404. The world's POSTs carry
    # no JSON/file, so permitted writes answer 400; the annotation is the assigned pathologist's, on the
    # shared layer (a personal one would be 404 for the admin).
    "slide_annotations": {"GET": case_read(200), "POST": case_read(400)},
    "slide_annotations_export": {"GET": case_read(200), "POST": everyone(405) | {"anonymous": 302}},
    "slide_annotations_import": {"GET": any_user(405) | {"anonymous": 302}, "POST": case_read(400)},
    "slide_annotation": {"GET": case_read(200), "POST": case_read(400),
                         "kwargs": {"annotation_id": lambda world: matrix_annotation(world)}},
    "slide_annotation_delete": {"GET": any_user(405) | {"anonymous": 302}, "POST": case_read(200),
                                "kwargs": {"annotation_id": lambda world: matrix_annotation(world)}},
    "annotation_labels": {"GET": admin_only(200), "POST": admin_only(302)},
    # --- analysis: jobs and models are the lab admins'; search is for pathologists and admins
    "analysis_search": {"GET": any_user(200) | {"evaluator": 403}, "POST": any_user(200) | {"evaluator": 403}},
    "slide_job_status": {"GET": case_read(200), "POST": case_read(200)},
    "slide_analyze": {"GET": admin_only(405), "POST": admin_only(200)},
    # No attention map is computed in the world: 404 for everyone signed in (UNVERIFIED: permitted path).
    "slide_attention": {"GET": any_user(404), "POST": any_user(404)},
    "job_status": {"GET": admin_only(200), "POST": admin_only(200)},
    "job_retry": {"GET": admin_only(405), "POST": admin_only(302)},
    "job_list": {"GET": admin_only(200), "POST": admin_only(200)},
    "job_cancel": {"GET": admin_only(405), "POST": admin_only(302)},
    "bundle_list": {"GET": admin_only(200), "POST": admin_only(200)},
    "bundle_detail": {"GET": admin_only(200), "POST": admin_only(200)},
    "bundle_activate": {"GET": admin_only(405), "POST": admin_only(302)},
    "bundle_reembed": {"GET": admin_only(405), "POST": admin_only(302)},
    "bundle_train": {"GET": admin_only(405), "POST": admin_only(302)},
    # --- reports: lab admins read, only the assigned pathologist writes (admins 403), others 404
    "report_workspace": {"GET": case_read(200), "POST": any_user(405)},
    "report_print": {"GET": case_read(200), "POST": any_user(405)},
    "report_pdf": {"GET": case_read(200), "POST": any_user(405)},
    "report_section_history": {"GET": case_read(200), "POST": any_user(405)},
    "report_draft_status": {"GET": case_read(200), "POST": any_user(405)},
    "report_fhir": {"GET": case_read(200), "POST": any_user(405),
                    "kwargs": {"report_id": lambda world: world.signed_report.pk}},
    "report_version_pdf": {"GET": case_read(200), "POST": any_user(405),
                           "kwargs": {"report_id": lambda world: world.signed_report.pk}},
    "case_fhir": {"GET": case_read(200), "POST": any_user(405),
                  "kwargs": {"case_id": lambda world: world.signed_report.case_id}},
    "case_fhir_history": {"GET": case_read(200), "POST": any_user(405),
                          "kwargs": {"case_id": lambda world: world.signed_report.case_id}},
    "report_start": {"GET": any_user(405), "POST": case_read(302, admin=403)},
    "report_draft": {"GET": any_user(405), "POST": case_read(400, admin=403)},  # no method chosen
    "report_followup": {"GET": any_user(405), "POST": case_read(302, admin=403)},
    "report_section_save": {"GET": any_user(405), "POST": case_read(400, admin=403)},  # no version sent
    "report_section_restore": {"GET": any_user(405), "POST": case_read(302, admin=403)},
    "report_classification_decide": {"GET": any_user(405), "POST": case_read(400, admin=403)},
    "report_sign": {"GET": any_user(405), "POST": case_read(303, admin=403)},  # no password: back to the workspace
    "report_discard": {"GET": any_user(405), "POST": case_read(302, admin=403)},
    "labelset_list": {"GET": admin_only(200), "POST": admin_only(200)},
    "labelset_create": {"GET": admin_only(200), "POST": admin_only(200)},
    "labelset_edit": {"GET": admin_only(200), "POST": admin_only(200)},
    # --- evaluation: lab admins run studies and see results (they name sources); evaluators rate, blinded
    "evaluation_studies": {"GET": expect(admin=200, assigned=403, other=403, evaluator=200, outsider=403),
                           "POST": expect(admin=405, assigned=403, other=403, evaluator=405, outsider=403)},
    "evaluation_study_create": {"GET": admin_only(200), "POST": admin_only(200)},
    "evaluation_study_preview": {"GET": admin_only(200), "POST": admin_only(405)},
    "evaluation_results": {"GET": admin_only(200), "POST": admin_only(405)},
    "evaluation_results_live": {"GET": admin_only(200), "POST": admin_only(405)},
    "evaluation_study_status": {"GET": admin_only(405), "POST": admin_only(302)},
    "evaluation_export": {"GET": admin_only(200), "POST": admin_only(405), "kwargs": {"what": "json"}},
    "evaluation_queue": {"GET": expect(admin=403, assigned=403, other=403, evaluator=200, outsider=403),
                         "POST": expect(admin=403, assigned=403, other=403, evaluator=405, outsider=403)},
    "evaluation_continue": {"GET": expect(admin=403, assigned=403, other=403, evaluator=302, outsider=403),
                            "POST": expect(admin=403, assigned=403, other=403, evaluator=405, outsider=403)},
    "evaluation_rate": {"GET": expect(admin=403, assigned=403, other=403, evaluator=200, outsider=403),
                        "POST": expect(admin=403, assigned=403, other=403, evaluator=400, outsider=403)},
}

# URL keyword -> the value taken from the world fixture (tests/test_trust_access_matrix.py: World).
PARAMS = {
    "case_id": lambda world: world.case.pk,
    "part_id": lambda world: world.part.pk,
    "slide_id": lambda world: world.slide.pk,
    "user_id": lambda world: world.cast.path2.pk,
    "report_id": lambda world: world.report.pk,
    "section_id": lambda world: world.section.pk,
    "number": lambda world: 1,  # the section's first saved version
    "classification_id": lambda world: world.classification.pk,
    "labelset_id": lambda world: world.labelset.pk,
    "job_id": lambda world: world.job.pk,
    "bundle_id": lambda world: world.bundle.pk,
    "study_id": lambda world: world.study.pk,
    "position": lambda world: 1,
}


def matrix_annotation(world):
    """A shared annotation by the assigned pathologist on the world's slide (made once per world)."""
    from webapp.slides.models import Annotation

    geometry = {"type": "Point", "coordinates": [10, 10]}
    row, _ = Annotation.objects.get_or_create(slide=world.slide, owner=world.cast.path1, layer="shared",
                                              kind="point", defaults={"geometry": geometry})
    return row.pk
