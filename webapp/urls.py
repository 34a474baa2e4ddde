from django.contrib import admin
from django.urls import include, path

from . import health

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
