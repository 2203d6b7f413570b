"""An order service's write path in Python (pymongo), beside which outbox-relay runs.

Each order is written together with its event in one MongoDB transaction. The event is the plain
shape {type, aggregateId, data, timestamp} inserted as is into the outbox collection: no relay
fields, no partition, no status. The relay publishes it to RabbitMQ and marks it delivered.

    MONGODB_URI=... OUTBOX_DATABASE=shop python writer.py --orders 10

Options choose the kind of _id (the driver's ObjectId, an explicit ObjectId, a UUID string, an
integer, or all four in turn) and how many events each order gets (OrderCreated, then
OrderPaid, OrderShipped, ... each in a transaction of its own, as a service would write them
over an order's life). With --trace each write runs in a span of the OpenTelemetry SDK, whose W3C
context goes into the event as `traceparent` (and `tracestate`), so the trace goes on through
the relay and the consumers. It prints one JSON object: the events in the order they were written.
"""

import argparse
import json
import os
import uuid
from datetime import datetime, timezone

from bson import Decimal128, ObjectId
from pymongo import MongoClient

try:
    from opentelemetry import trace
    from opentelemetry.propagate import inject
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind
except ImportError:  # only --trace needs the SDK
    trace = None

LIFECYCLE = ["OrderCreated", "OrderPaid", "OrderPacked", "OrderShipped", "OrderDelivered"]
ID_KINDS = ["default", "objectid", "uuid", "int"]


def make_tracer():
    """A tracer of the OpenTelemetry SDK (spans sampled, none exported: point an OTLP exporter at
    your collector in a real service)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "python-writer"}))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("python-writer")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10)
    parser.add_argument("--events-per-order", type=int, default=1, choices=range(1, len(LIFECYCLE) + 1))
    parser.add_argument("--id-kind", choices=ID_KINDS + ["mixed"], default="default")
    parser.add_argument("--first-int-id", type=int, default=1, help="first _id with --id-kind int (or mixed)")
    parser.add_argument("--collection", default=os.environ.get("OUTBOX_COLLECTION", "outbox"))
    parser.add_argument("--trace", action="store_true", help="write each event in a span; its context goes into the event")
    args = parser.parse_args()
    tracer = make_tracer() if args.trace else None

    client = MongoClient(os.environ["MONGODB_URI"])
    db = client[os.environ.get("OUTBOX_DATABASE", "outbox")]
    outbox = db[args.collection]
    written = []
    next_int = args.first_int_id

    for n in range(args.orders):
        order_id = str(ObjectId())
        order = {
            "_id": order_id,
            "customerId": f"customer-{n}",
            "items": [
                {"sku": "SKU-1", "quantity": 2, "unitPrice": Decimal128("19.99")},
                {"sku": "SKU-2", "quantity": 1, "unitPrice": Decimal128("5.01")},
            ],
            "totalAmount": Decimal128("44.99"),
            "status": "created",
        }
        for step, event_type in enumerate(LIFECYCLE[: args.events_per_order]):
            kind = ID_KINDS[(n * args.events_per_order + step) % len(ID_KINDS)] if args.id_kind == "mixed" else args.id_kind
            event = {
                "type": event_type,
                "aggregateId": order_id,
                "data": {"orderId": order_id, "customerId": order["customerId"], "totalAmount": order["totalAmount"],
                         "items": order["items"], "step": step},
                "timestamp": datetime.now(timezone.utc),
            }
            if kind == "objectid":
                event["_id"] = ObjectId()
            elif kind == "uuid":
                event["_id"] = str(uuid.uuid4())
            elif kind == "int":
                event["_id"] = next_int
                next_int += 1

            def write(session, event=event, step=step, event_type=event_type):
                if step == 0:
                    db.orders.insert_one(order, session=session)
                else:
                    db.orders.update_one({"_id": order_id}, {"$set": {"status": event_type}}, session=session)
                return outbox.insert_one(event, session=session).inserted_id

            record = {"kind": kind, "type": event_type, "aggregateId": order_id}
            if tracer:
                with tracer.start_as_current_span(f"write {event_type}", kind=SpanKind.PRODUCER) as span:
                    carrier = {}
                    inject(carrier)  # the W3C trace context of the current span
                    event["traceparent"] = carrier["traceparent"]
                    if "tracestate" in carrier:
                        event["tracestate"] = carrier["tracestate"]
                    context = span.get_span_context()
                    record.update(traceparent=carrier["traceparent"], traceId=format(context.trace_id, "032x"),
                                  spanId=format(context.span_id, "016x"))
                    with client.start_session() as session:
                        inserted = session.with_transaction(write)
            else:
                with client.start_session() as session:
                    inserted = session.with_transaction(write)
            written.append({"id": str(inserted), **record})

    print(json.dumps({"events": written}))


if __name__ == "__main__":
    main()
