"""Tests of the model registry service."""
