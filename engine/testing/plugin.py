"""pytest plugin entry point for policy repositories (pytest-bdd step library)."""
