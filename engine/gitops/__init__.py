"""The GitOps wing: tools that run on a policy repository, in CI or on an admin's machine, never
in the serving path.

- `plan/`: the policy at a git ref, the semantic diff, the blast radius over a corpus and the store;
- `bdd/`: the pytest-bdd step library shipped as the pytest plugin `liveprism` (`liveprism test`);
- `promote`: a held message made a list entry or a rule (YAML edit, validation, scenario, branch);
- `yaml_edit`: edits of policy YAML that keep every other byte.
Replaying a message through a graph is `engine.graph.replay`: graph work, below both wings.
"""
