"""What the outbox keeps, as values: a delivery to record, a delivery recorded, and the keys that say
who a recipient is and which card Feishu has seen (its `uuid`). Pure: no I/O."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .chats import mask_chat_url

QUEUED, SENT, FAILED = "queued", "sent", "failed"


def person_key(address: str) -> str:
    """Who an owner is: an email whatever its case (Feishu's lookup ignores case), an open_id as written."""
    return address.casefold() if "@" in address else address


def recipient_identity(channel: str, recipient: str) -> tuple[str, str]:
    """Who a recipient is: a person by `person_key`, a group bot by its URL as written."""
    return channel, person_key(recipient) if channel == "dm" else recipient


def feishu_uuid(event_key: str, channel: str, recipient: str) -> str:
    """Feishu's dedupe key for one card to one recipient: the same on every retry, at most 50 chars."""
    channel, identity = recipient_identity(channel, recipient)
    digest = hashlib.sha256(f"{event_key}\n{channel}\n{identity}".encode("utf-8")).hexdigest()
    return "gf-" + digest[:40]


@dataclass(frozen=True)
class NewDelivery:
    channel: str          # "dm" (email or open_id) or "chat" (a group bot webhook)
    recipient: str = field(repr=False)    # a bot's URL is a credential
    rule: str
    content: str          # the card as the JSON string Feishu receives
    uuid: str             # Feishu's dedupe key: the same on every attempt (a DM to an email is sent under
                          # its resolved open_id's key instead: delivery.py)


@dataclass(frozen=True)
class Delivery:
    id: int
    event_key: str
    channel: str
    recipient: str = field(repr=False)    # a bot's URL is a credential
    rule: str
    content: str
    uuid: str
    status: str
    attempts: int          # HTTP attempts, inline retries included
    rounds: int            # failed rounds (the request's, then each retry's): the backoff exponent
    next_attempt_at: float
    lease_until: float | None
    last_error: str | None
    created_at: float
    give_up_at: float

    def on_first_try(self, now: float) -> bool:
        """A card on its first try: inside a webhook now, or left by a process killed during it until the retry
        thread takes the row over. Not waiting, so Outbox.counts() leaves it out (its SQL says the same)."""
        return self.status == QUEUED and self.attempts == 0 and self.last_error is None \
            and (self.lease_until or 0) > now


def is_open_id(recipient: str) -> bool:
    return recipient.startswith("ou_")


def needs_lookup(row: Delivery) -> bool:
    """A DM addressed by email: its open_id comes from Feishu's lookup (or the cache)."""
    return row.channel == "dm" and not is_open_id(row.recipient)


def shown(row: Delivery) -> str:
    """A row's recipient as logs show it: a group bot's URL is a credential."""
    return mask_chat_url(row.recipient) if row.channel == "chat" else row.recipient
