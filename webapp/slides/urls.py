from django.urls import path

from . import annotation_views as av
from . import viewer_views as vv
from . import views

urlpatterns = [
    path("cases/<int:case_id>/parts/<int:part_id>/slides/upload/", views.slide_upload, name="slide_upload"),
    path("slides/<uuid:slide_id>/thumbnail.jpg", views.slide_thumbnail, name="slide_thumbnail"),
    path("dropbox/", views.dropbox_list, name="dropbox_list"),
    path("dropbox/import/", views.dropbox_import, name="dropbox_import"),
    path("dropbox/import-matched/", views.dropbox_import_matched, name="dropbox_import_matched"),
]

# --- the viewer: pages, metadata, Deep Zoom, IIIF, overlays (webapp.slides.viewer_views) -------------
urlpatterns += [
    path("cases/<int:case_id>/viewer/", vv.case_viewer, name="case_viewer"),
    path("slides/<uuid:slide_id>/deidentified/", vv.deidentified_viewer, name="slide_deidentified_viewer"),
    path("slides/<uuid:slide_id>/viewer.json", vv.slide_meta, name="slide_viewer_meta"),
    path("slides/<uuid:slide_id>/mpp/", vv.slide_set_mpp, name="slide_set_mpp"),
    path("slides/<uuid:slide_id>/associated/<slug:name>.jpg", vv.associated_image, name="slide_associated"),
    path("slides/<uuid:slide_id>/dzi/slide.dzi", vv.dzi_descriptor, name="slide_dzi"),
    path("slides/<uuid:slide_id>/dzi/slide_files/<int:level>/<int:col>_<int:row>.<str:fmt>", vv.dzi_tile,
         name="slide_dzi_tile"),
    path("slides/<uuid:slide_id>/iiif", vv.iiif_base, name="slide_iiif_base"),
    path("slides/<uuid:slide_id>/iiif/info.json", vv.iiif_info, name="slide_iiif_info"),
    path("slides/<uuid:slide_id>/iiif/<str:region>/<str:size>/<str:rotation>/<str:quality_format>",
         vv.iiif_image, name="slide_iiif_image"),
    path("slides/<uuid:slide_id>/overlays/", vv.overlay_list, name="slide_overlays"),
    path("slides/<uuid:slide_id>/overlays/<slug:name>.json", vv.overlay_data, name="slide_overlay"),
]

# --- annotations (webapp.slides.annotation_views) ------------------------------------------------------
urlpatterns += [
    path("slides/<uuid:slide_id>/annotations/", av.annotation_list, name="slide_annotations"),
    path("slides/<uuid:slide_id>/annotations/export.geojson", av.annotation_export, name="slide_annotations_export"),
    path("slides/<uuid:slide_id>/annotations/import/", av.annotation_import, name="slide_annotations_import"),
    path("slides/<uuid:slide_id>/annotations/<uuid:annotation_id>/", av.annotation_detail, name="slide_annotation"),
    path("slides/<uuid:slide_id>/annotations/<uuid:annotation_id>/delete/", av.annotation_delete,
         name="slide_annotation_delete"),
    path("annotation-labels/", av.annotation_labels, name="annotation_labels"),
]
