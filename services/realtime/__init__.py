"""Realtime service: retained, ordered topics with resumable subscriptions."""
