"""Policy → filter graph, once per policy version: the full compile (`compiler`), the piece-wise
reload that recompiles only what changed (`incremental`), and the hot-swapped live graph (`live`)."""
