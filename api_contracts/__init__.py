"""Pydantic models for everything that crosses gmiq's boundaries: HTTP bodies and Redis messages."""
