from django.urls import path

from . import views

urlpatterns = [
    path("search/", views.search_page, name="analysis_search"),
    path("analysis/slides/<uuid:slide_id>/status/", views.slide_job_status, name="slide_job_status"),
    path("analysis/slides/<uuid:slide_id>/analyze/", views.slide_analyze, name="slide_analyze"),
    path("analysis/slides/<uuid:slide_id>/attention.json", views.slide_attention, name="slide_attention"),
    path("analysis/jobs/<int:job_id>/", views.job_status, name="job_status"),
    path("models/", views.bundle_list, name="bundle_list"),
    path("models/train/", views.bundle_train, name="bundle_train"),
    path("models/<int:bundle_id>/", views.bundle_detail, name="bundle_detail"),
    path("models/<int:bundle_id>/activate/", views.bundle_activate, name="bundle_activate"),
    path("models/<int:bundle_id>/reembed/", views.bundle_reembed, name="bundle_reembed"),
]
