from django.contrib import admin
from django.contrib.staticfiles import finders
from django.http import FileResponse, Http404
from django.urls import include, path
from django.views.decorators.http import require_safe

from . import errors, health


@require_safe
def favicon(request):
    """The icon itself (browsers ask for /favicon.ico whatever a page's <link rel=icon> says, e.g. on PDFs
    and JSON): served here, not redirected, from the same static folder."""
    found = finders.find("img/favicon.ico")
    if not found:
        raise Http404("No icon.")
    response = FileResponse(open(found, "rb"), content_type="image/vnd.microsoft.icon")  # noqa: SIM115
    response["Cache-Control"] = "public, max-age=86400"
    return response


# Friendly pages with the navigation, which never read a refused request's body (webapp/errors.py).
handler403 = errors.permission_denied
handler404 = errors.page_not_found
handler500 = errors.server_error

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("favicon.ico", favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("", include("webapp.accounts.urls")),
    path("", include("webapp.jobs.urls")),
    path("", include("webapp.cases.urls")),
    path("", include("webapp.slides.urls")),
    path("", include("webapp.analysis.urls")),
    path("", include("webapp.reports.urls")),
    path("", include("webapp.evaluation.urls")),
    path("", include("webapp.audit.urls")),
]
