from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("cases/", views.case_list, name="case_list"),
    path("cases/new/", views.case_create, name="case_create"),
    path("cases/<int:case_id>/", views.case_detail, name="case_detail"),
    path("cases/<int:case_id>/edit/", views.case_edit, name="case_edit"),
    path("cases/<int:case_id>/assign/", views.case_assign, name="case_assign"),
    path("cases/<int:case_id>/parts/new/", views.part_create, name="part_create"),
    path("cases/<int:case_id>/parts/<int:part_id>/edit/", views.part_edit, name="part_edit"),
    path("specimen-rules/", views.specimen_rules, name="specimen_rules"),
]
