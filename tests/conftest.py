"""Test-suite wide settings."""

from hypothesis import settings

# CI machines are shared and noisy: a property test fails on a wrong answer, never on a slow one.
settings.register_profile("liveprism", deadline=None)
settings.load_profile("liveprism")
