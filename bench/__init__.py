"""Benchmarks of gmiq against the upstream limit and a naive Celery task (`python -m bench.run`)."""
