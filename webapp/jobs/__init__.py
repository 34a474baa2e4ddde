"""Background jobs: the job table, the handler registry, dispatch to Celery, retries and worker heartbeats."""
