from django.urls import path

from . import views

# Cancel and retry keep the /analysis/jobs/ paths they had before jobs had an app of their own.
urlpatterns = [
    path("jobs/", views.job_list, name="job_list"),
    path("analysis/jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("analysis/jobs/<int:job_id>/retry/", views.job_retry, name="job_retry"),
]
