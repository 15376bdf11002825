"""`liveprism plan`: what a policy change changes (semantic diff) and to which messages (blast radius)."""
