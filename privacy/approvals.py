"""Dual authorisation: bulk actions on personal data need a second person.

One token asks (``request``); a *different* token holding ``privacy:approve`` approves
(``approve``) before the request expires; then the action runs, once. Requests live in Redis
under ``approval:<id>`` with the expiry as their TTL: an expired request is gone and can
neither be approved nor used. Every step is audited. Requests name profile ids, never values.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from contracts.privacy import Approval, ApprovalState
from privacy.audit import Audit

APPROVE = "privacy:approve"
ACTIONS = ("erasure", "export", "rotate-master")

#: Compare-and-set of a request's JSON (a second approver or user loses the race cleanly).
_SWAP = """
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""


class ApprovalError(Exception):
    """A request that cannot be approved or used; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Approvals:
    """Ask for, approve and use approvals."""

    def __init__(self, redis: aioredis.Redis, namespace: str, ttl_s: float, audit: Audit) -> None:
        self._redis = redis
        self._ns = namespace
        self._ttl = ttl_s
        self._audit = audit
        self._swap = redis.register_script(_SWAP)

    def _key(self, approval_id: str) -> str:
        return f"{self._ns}:approval:{approval_id}"

    async def request(
        self, action: str, profile_ids: list[str], actor: str, origin: str
    ) -> Approval:
        """Record a pending request; it expires after the configured time."""
        if action not in ACTIONS:
            raise ApprovalError("invalid_action", f"action must be one of {list(ACTIONS)}")
        now = datetime.now(UTC)
        approval = Approval(
            id=uuid.uuid4().hex,
            action=action,
            profile_ids=sorted(set(profile_ids), key=lambda p: (len(p), p)),
            state=ApprovalState.PENDING,
            requested_by=actor,
            requested_at=now,
            expires_at=now + timedelta(seconds=self._ttl),
        )
        await self._audit.record(
            actor, "approval.requested", approval.id, len(approval.profile_ids), origin, of=action
        )
        await self._redis.set(
            self._key(approval.id), approval.model_dump_json(), px=int(self._ttl * 1000)
        )
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        """The request, or None when unknown or expired."""
        raw = await self._redis.get(self._key(approval_id))
        return Approval.model_validate_json(raw) if raw else None

    async def _change(self, old: Approval, new: Approval) -> None:
        swapped = await self._swap(
            keys=[self._key(old.id)], args=[old.model_dump_json(), new.model_dump_json()]
        )
        if not swapped:
            raise ApprovalError("conflict", "the request changed meanwhile (or expired)")

    async def approve(self, approval_id: str, approver: str, origin: str) -> Approval:
        """Approve a pending request of someone else."""
        found = await self.get(approval_id)
        if found is None:
            raise ApprovalError("not_found", "no such request, or it expired")
        if found.state is not ApprovalState.PENDING:
            raise ApprovalError("conflict", f"the request is {found.state.value}, not pending")
        if found.requested_by == approver:
            raise ApprovalError("forbidden", "a request must be approved by another token")
        approved = found.model_copy(
            update={"state": ApprovalState.APPROVED, "approved_by": approver}
        )
        await self._audit.record(
            approver,
            "approval.approved",
            found.id,
            len(found.profile_ids),
            origin,
            of=found.action,
            requested_by=found.requested_by,
        )
        await self._change(found, approved)
        return approved

    async def use(self, approval_id: str, action: str, user: str | None) -> Approval:
        """Take an approved request for ``action`` asked by ``user`` (None: by anyone, for
        the operator's CLI); it cannot be used again."""
        found = await self.get(approval_id)
        if found is None:
            raise ApprovalError("not_found", "no such request, or it expired")
        if found.action != action or (user is not None and found.requested_by != user):
            raise ApprovalError("forbidden", f"the request is not a {action} asked by {user}")
        if found.state is not ApprovalState.APPROVED:
            raise ApprovalError("forbidden", f"the request is {found.state.value}, not approved")
        used = found.model_copy(update={"state": ApprovalState.USED})
        await self._change(found, used)
        return used

    async def record_outcome(self, approval: Approval, outcome: list[str]) -> Approval:
        """Remember what using the request started (erasure ids)."""
        done = approval.model_copy(update={"outcome": outcome})
        await self._change(approval, done)
        return done
