"""The tests' one kit: what more than one test file needs, each kind of thing in one module.

- `processes`: the checkout (`REPO`), free ports, waiting for a port or a condition, stopping by
  PID, the `liveprism` command line (`run_liveprism`, in-process `invoke`), swaks;
- `policies`: `write_policy` (a minimal valid policy, or the lab gateway for a real serve), `route`,
  `acme_to`, the example policy (`copy_example`, `example_with_new_key`), what loading gives
  (`problems_of`, `problem_texts`, `fingerprint`), policy repositories in git (`git`, `commit`,
  `remote_and_clone`);
- `messages`: `message()` (the one message builder), hostile ones (`folded_subject`, `many_parts`),
  the store's records (`accepted`, `copy_plan`), GTUBE, EICAR;
- `corpus`: the example corpus, one realistic message per global rule of policies/;
- `keys`: DKIM keys made for the run, `sign`, `arc_seal`, the authentication checks' zones and author;
- `nsd`: a real nsd (`Nsd`), zone texts (`zone_file`, `txt`), the `nsd_fixture` factory, a resolver
  asking a test server (`resolver_for`, `dns_settings`);
- `resolvers`: `FakeResolver`, the in-memory resolver of the unit tests;
- `peers`: the gateway's real peers (mailboxes, Postfix's smtp-sink, DNS, clamd, TLS/HTTPS, OpenDKIM);
- `gateway`: `liveprism serve` as a process (`Gateway`, `AdminGateway`), `start_gateway`, SMTP
  clients (`send`, `Line`);
- `relay_lab`: the relay on one event loop with in-process SMTP and DNS servers.

Fixtures used by several folders (`relay_lab`, `keys`) are in tests/conftest.py, the end-to-end
ones (`procs`, `nsd`) in tests/e2e/conftest.py.
"""
