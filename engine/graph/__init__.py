"""Deciding: the compiled filter graph (`filter_graph`), its once-per-policy build (`build/`), the
per-transaction `Evaluation` (`transaction`), the result values (`verdict`), list and content
indexes (`lists`, `content`), mail-loop detection (`loops`), address normalisation (`addresses`)
and replays of a stored or corpus message with its envelope (`replay`, used by `plan` and the BDD steps)."""
