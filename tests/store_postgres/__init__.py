"""The PostgreSQL store against a real PostgreSQL: the contract suite on both backends, and what only a cluster has."""
