"""Signals the analysis app sends, for apps above it (reports) that react without being imported here.

- `slide_analysed(sender=Slide, slide, bundle, model, embedding)`: a slide's embedding was just stored by
  the worker (`pipeline.embed_slide`); `model` is the loaded PathAlign and `embedding` the slide's
  inference.SlideEmbedding, so a receiver can classify it at once (the reports app computes triage).
"""
from django.dispatch import Signal

slide_analysed = Signal()
