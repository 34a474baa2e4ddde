from django.apps import AppConfig


def _study_still_open(study_id: int, user_id: int) -> bool:
    """A rater's de-identified slide grant holds while the study is open and still assigns them work."""
    from .models import Assignment, StudyStatus

    return Assignment.objects.filter(study_id=study_id, evaluator_id=user_id,
                                     study__status=StudyStatus.OPEN).exists()


def _study_shows_overlays(study_id: int) -> bool:
    """Raters see the model's overlays (attention heatmap) only in a study that allows them."""
    from .models import Study

    return Study.objects.filter(pk=study_id, show_overlays=True).exists()


def _study_shows_annotations(study_id: int) -> bool:
    """Raters see the shared annotation layer (read-only, de-identified) only in a study that allows it."""
    from .models import Study

    return Study.objects.filter(pk=study_id, show_annotations=True).exists()


class EvaluationConfig(AppConfig):
    name = "webapp.evaluation"
    label = "evaluation"

    def ready(self) -> None:
        # Closing a study stops its raters' slide grants at once (webapp/slides/tile_access.py); overlays
        # and the shared annotation layer reach raters only in a study that allows them.
        from webapp.slides.tile_access import register_grant_source

        register_grant_source("study", _study_still_open, overlays_allowed=_study_shows_overlays,
                              annotations_allowed=_study_shows_annotations)
