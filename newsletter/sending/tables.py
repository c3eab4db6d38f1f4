"""The tables the sending code reads and writes through SQLAlchemy Core.

Core statements on a connection of their own cost about a quarter of the ORM's per
message; the ORM models stay the description of the schema.
"""

from __future__ import annotations

from newsletter.models import Campaign, DeferredDelivery, SendBatch, Subscriber

campaign_table = Campaign.__table__
batch_table = SendBatch.__table__
deferred_table = DeferredDelivery.__table__
subscriber_table = Subscriber.__table__
