"""`report_signed`: sent once a report's signature has committed (sender=Report, report=..., user=...).

Sign-out itself (services.sign) knows nothing of what follows it; drafting listens to embed the signed
text for retrieval drafts.
"""
from django.dispatch import Signal

report_signed = Signal()
