"""The Gherkin step library of policy repositories (`tests/features/*.feature`), registered as the
pytest plugin `liveprism`: `plugin` (registration, fixtures), `steps` (the step definitions),
`world` (one scenario's policy, envelope and outcome), `resolver` (DNS answers a scenario states)."""
