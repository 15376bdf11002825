"""The Gherkin step library for policy repositories (pytest plugin `liveprism`, see `plugin`)."""
