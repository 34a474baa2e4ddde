from django.urls import path

from . import views

urlpatterns = [
    path("worklist/", views.worklist_view, name="worklist"),
    path("cases/<int:case_id>/workspace/", views.workspace, name="report_workspace"),
    path("cases/<int:case_id>/report/start/", views.report_start, name="report_start"),
    path("cases/<int:case_id>/report/draft/", views.draft_start, name="report_draft"),
    path("cases/<int:case_id>/report/draft/<int:job_id>/", views.draft_status, name="report_draft_status"),
    path("cases/<int:case_id>/report/followup/", views.followup_start, name="report_followup"),
    path("cases/<int:case_id>/report/print/", views.report_print, name="report_print"),
    path("cases/<int:case_id>/report.pdf", views.report_pdf_view, name="report_pdf"),
    path("cases/<int:case_id>/fhir.json", views.case_fhir, name="case_fhir"),
    path("cases/<int:case_id>/fhir/history.json", views.case_fhir_history, name="case_fhir_history"),
    path("reports/<int:report_id>/sections/<int:section_id>/save/", views.section_save, name="report_section_save"),
    path("reports/<int:report_id>/sections/<int:section_id>/history/", views.section_history,
         name="report_section_history"),
    path("reports/<int:report_id>/sections/<int:section_id>/restore/<int:number>/", views.section_restore,
         name="report_section_restore"),
    path("reports/<int:report_id>/classifications/<int:classification_id>/", views.classification_decide,
         name="report_classification_decide"),
    path("reports/<int:report_id>/sign/", views.report_sign, name="report_sign"),
    path("reports/<int:report_id>/discard/", views.followup_discard, name="report_discard"),
    path("reports/<int:report_id>/fhir.json", views.report_fhir, name="report_fhir"),
    path("reports/<int:report_id>/report.pdf", views.report_version_pdf, name="report_version_pdf"),
    path("labelsets/", views.labelset_list, name="labelset_list"),
    path("labelsets/new/", views.labelset_edit, name="labelset_create"),
    path("labelsets/<int:labelset_id>/", views.labelset_edit, name="labelset_edit"),
]
