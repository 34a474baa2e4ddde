from django.contrib import admin
from django.urls import include, path

from . import errors, health

# Friendly pages with the navigation, which never read a refused request's body (webapp/errors.py).
handler403 = errors.permission_denied
handler404 = errors.page_not_found
handler500 = errors.server_error

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
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
