"""DKIM (RFC 6376, RFC 8463) for the inbound check and the relay's signer.

- `canonical`: body and header canonicalization, a body hashed in pieces;
- `message`: a message parsed for verification (header fields; the body stays in place);
- `verify`: the lean verifier that can only confirm "valid" (dkimpy decides the rest);
- `keys`: tenants' signing keys (generation, loading, DNS record) and verifying RSA keys;
- `dkimpy_patch`: replaces dkimpy functions process-wide with faster equal ones (`install()`).
The check itself is `engine.checks.dkim`; signing outbound copies is `engine.relay.signing`.
"""
