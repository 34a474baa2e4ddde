"""Resolve a slide for a user through the case it belongs to (404 for anyone who may not see the case)."""
from django.http import Http404

from webapp.cases.access import visible_cases

from .models import Slide


def visible_slides(user):
    return Slide.objects.filter(part__case__in=visible_cases(user))


def get_slide_for_user(user, slide_id) -> Slide:
    try:
        return visible_slides(user).select_related("part__case").get(pk=slide_id)
    except (Slide.DoesNotExist, ValueError, TypeError):
        raise Http404("No such slide.") from None
