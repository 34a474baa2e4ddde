from django.urls import path

from . import views

urlpatterns = [
    path("evaluation/", views.study_list, name="evaluation_studies"),
    path("evaluation/studies/new/", views.study_create, name="evaluation_study_create"),
    path("evaluation/studies/preview/", views.study_preview, name="evaluation_study_preview"),
    path("evaluation/studies/<int:study_id>/results/", views.study_results, name="evaluation_results"),
    path("evaluation/studies/<int:study_id>/results/live/", views.study_results_live, name="evaluation_results_live"),
    path("evaluation/studies/<int:study_id>/status/", views.study_status, name="evaluation_study_status"),
    path("evaluation/studies/<int:study_id>/export/<str:what>", views.export, name="evaluation_export"),
    path("evaluation/studies/<int:study_id>/queue/", views.rater_queue, name="evaluation_queue"),
    path("evaluation/studies/<int:study_id>/continue/", views.rater_continue, name="evaluation_continue"),
    path("evaluation/studies/<int:study_id>/rate/<int:position>/", views.rate, name="evaluation_rate"),
]
