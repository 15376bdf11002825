"""Mail-loop detection (issue 7 item 2): a message that keeps coming back is refused with 554 5.4.6.

Three signs, strongest first, judged from the message's (unfolded) `Received` header values:
- a copy returns to its own recipients: it carries this gateway's trace for a queue id the
  store knows, and that stored message went to one of the same recipients (`returned_ids`, found
  by `serve` in its store; a forwarder that changes the recipient is not a loop);
- this gateway's own trace appears `OWN_TRACE_LIMIT` times (a tenant's outbound mail to another
  tenant legitimately passes twice, never three times);
- more than `hopcount_limit` Received fields (RFC 5321 §6.3; Postfix's `hopcount_limit`).
The refusal is a value (`Hit` + `Reply`), decided inside the Evaluation so `explain` shows it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine.graph.verdict import Hit, Reply
from engine.policy.models import Action

OWN_TRACE_LIMIT = 2
LOOP_HIT_ID = "mail-loop"


@dataclass(frozen=True, slots=True)
class LoopRefusal:
    """Why the message is refused: the hit (`mail-loop`, shown by explain) and the 554."""

    hit: Hit
    reply: Reply


def _trace_marker(hostname: str) -> str:
    return f"by {hostname} (LivePrism)"


def own_trace_ids(received: Sequence[str], hostname: str) -> tuple[str, ...]:
    """Queue ids of this gateway's own Received traces in the message (see engine/smtp/headers.py)."""
    pattern = re.compile(re.escape(_trace_marker(hostname)) + r" with E?SMTPS? id ([0-9A-Za-z]+)")
    return tuple(match.group(1) for value in received for match in pattern.finditer(value))


def loop_refusal(
    received: Sequence[str], hostname: str, hopcount_limit: int, returned_ids: Sequence[str] = ()
) -> LoopRefusal | None:
    """The refusal of a message in a mail loop (see the module docstring), or None."""
    if returned_ids:
        detail = f"mail loop: this message already passed through {hostname} as {returned_ids[0]}"
    elif (passes := sum(_trace_marker(hostname) in value for value in received)) >= OWN_TRACE_LIMIT:
        detail = f"mail loop: this message already passed through {hostname} {passes} times"
    elif len(received) > hopcount_limit:
        detail = f"too many hops ({len(received)} Received header fields; mail loop?)"
    else:
        return None
    hit = Hit(LOOP_HIT_ID, "protocol", action=Action.reject, source="limits.hopcount_limit", message=detail)
    return LoopRefusal(hit, Reply(554, "5.4.6", detail))
