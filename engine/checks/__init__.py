"""External checks, one module per check: detection only.

Each check returns a value describing what it found (a result token, the domain, the DNS
lookups it made with their answers and times); what a result does to a message is decided by
the policy, never by the check. Every DNS question goes through the shared async resolver
(`engine.dns.resolver.Resolver.query`), so no check ever blocks the event loop on DNS.
"""
