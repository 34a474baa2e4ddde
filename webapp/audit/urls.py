from django.urls import path

from . import views

urlpatterns = [
    path("audit/", views.audit_log, name="audit_log"),
    path("audit/export.csv", views.audit_export_csv, name="audit_export_csv"),
    path("audit/export.json", views.audit_export_json, name="audit_export_json"),
    path("audit/case-access/", views.case_access_lookup, name="audit_case_access_lookup"),
    path("audit/cases/<int:case_id>/access/", views.case_access_report, name="audit_case_access"),
]
