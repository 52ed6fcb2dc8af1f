"""Publishes one signup event for signup-worker, with publisher confirms.

    pip install pika==1.4.4
    python3 publish_signup.py acme-bakery

AMQP_URL and SIGNUP_EXCHANGE as for the worker. The worker declares the exchange.
"""
import datetime
import json
import os
import sys
import uuid

import pika

slug = sys.argv[1] if len(sys.argv) > 1 else "acme-bakery"
amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
exchange = os.environ.get("SIGNUP_EXCHANGE", "tenant.events")

# The event (docs/schemas/tenant.signup.requested.json). Keep event_id when you retry:
# the worker stores each event_id once, so a republish is harmless.
event_id = str(uuid.uuid4())
now = datetime.datetime.now(datetime.timezone.utc)
event = {
    "event_id": event_id,
    "type": "tenant.signup.requested",
    "version": 1,
    "occurred_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
    "tenant": {
        "business_name": "Acme Bakery",
        "slug": slug,
        "owner_email": f"owner@{slug}.example",
        "tier": "starter",
        "is_demo": False,
    },
}

connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
channel = connection.channel()
# With confirms, basic_publish raises if the broker refuses the message (NackError) or,
# with mandatory, if no queue is bound for it (UnroutableError).
channel.confirm_delivery()
channel.basic_publish(
    exchange=exchange,
    routing_key="tenant.signup.requested",
    body=json.dumps(event).encode("utf-8"),
    properties=pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,  # persistent
        message_id=event_id,
    ),
    mandatory=True,
)
connection.close()
print(f"published {event_id}")
