"""`slide_stored` is sent after a new slide's row is committed; the analysis app queues its job on it."""
from django.dispatch import Signal

slide_stored = Signal()  # kwargs: slide, user
