"""`{% slide_analysis slide %}`: the slide's analysis state, for the case page (and anywhere else)."""
from __future__ import annotations

from django import template

from webapp.analysis.views import slide_job_context

register = template.Library()


@register.inclusion_tag("analysis/_slide_jobs.html", takes_context=True)
def slide_analysis(context, slide) -> dict:
    request = context.get("request")
    return slide_job_context(slide, request.user) if request else {"slide": slide}
