from django.urls import path

from . import views

urlpatterns = [
    path("cases/<int:case_id>/parts/<int:part_id>/slides/upload/", views.slide_upload, name="slide_upload"),
    path("slides/<uuid:slide_id>/thumbnail.jpg", views.slide_thumbnail, name="slide_thumbnail"),
    path("dropbox/", views.dropbox_list, name="dropbox_list"),
    path("dropbox/import/", views.dropbox_import, name="dropbox_import"),
    path("dropbox/import-matched/", views.dropbox_import_matched, name="dropbox_import_matched"),
]
