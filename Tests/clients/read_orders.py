"""Reads OrderCreated messages the way consumers outside this project do, and reports what it got.

    read_orders.py AMQP_URL QUEUE=FORMAT [QUEUE=FORMAT ...] [--count N] [--timeout SECONDS]

For each queue it takes N messages (default 1) with pika and parses each as a consumer written for
FORMAT would: the bare payload (amqplib, @golevelup/nestjs-rabbitmq), this project's envelope
(`data`), NestJS's `{"pattern", "data"}`, or CloudEvents in either mode through the official
CloudEvents SDK's RabbitMQ binding (`from_rabbitmq`), which validates the event. Amounts are read
exactly (decimal.Decimal from the JSON text, never a float), and the order's total is checked
against its lines. Prints one JSON object per message on standard output; exits 1 with the reason
on standard error when a message is missing or does not parse or validate.
"""

import json
import sys
import time
from decimal import Decimal

import pika
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_rabbitmq
from cloudevents.core.formats.json import JSONFormat


def fail(reason):
    print(reason, file=sys.stderr)
    sys.exit(1)


def exact(value):
    """An amount as exact text, from a JSON string or a JSON number read as Decimal."""
    if isinstance(value, bool) or not isinstance(value, (str, Decimal, int)):
        fail(f"amount {value!r} is neither a decimal string nor a number")
    return Decimal(value) if isinstance(value, str) else Decimal(value)


def order_of(data):
    """The seed's handler reads orderId, customerId, totalAmount and items."""
    items = [
        {"sku": item["sku"], "quantity": item["quantity"], "unitPrice": str(exact(item["unitPrice"])),
         "unitPriceJSON": "string" if isinstance(item["unitPrice"], str) else "number"}
        for item in data["items"]
    ]
    total = exact(data["totalAmount"])
    lines = sum((exact(item["unitPrice"]) * item["quantity"] for item in data["items"]), Decimal(0))
    if lines != total:
        fail(f"total {total} is not the sum of the lines {lines}")
    return {
        "orderId": data["orderId"], "customerId": data["customerId"], "totalAmount": str(total),
        "totalAmountJSON": "string" if isinstance(data["totalAmount"], str) else "number",
        "linesTotal": str(lines), "items": items,
    }


def sdk_matches(sdk_data, exact_data):
    """The SDK parses numbers as floats; each must be the decimal the text says (shortest repr)."""
    if isinstance(exact_data, dict):
        return isinstance(sdk_data, dict) and sdk_data.keys() == exact_data.keys() and all(
            sdk_matches(sdk_data[k], exact_data[k]) for k in exact_data)
    if isinstance(exact_data, list):
        return isinstance(sdk_data, list) and len(sdk_data) == len(exact_data) and all(
            sdk_matches(a, b) for a, b in zip(sdk_data, exact_data))
    if isinstance(exact_data, Decimal):
        return isinstance(sdk_data, float) and Decimal(repr(sdk_data)) == exact_data
    if isinstance(exact_data, int) and not isinstance(exact_data, bool):
        return isinstance(sdk_data, int) and sdk_data == exact_data
    return sdk_data == exact_data


def read(channel, queue, body_format, timeout):
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            break
        if time.monotonic() > deadline:
            fail(f"no message on {queue} within {timeout}s")
        time.sleep(0.05)
    headers = dict(properties.headers or {})
    report = {
        "queue": queue, "format": body_format, "routing_key": method.routing_key,
        "message_id": properties.message_id, "type": properties.type, "content_type": properties.content_type,
        "correlation_id": properties.correlation_id, "timestamp": properties.timestamp, "app_id": properties.app_id,
        "delivery_mode": properties.delivery_mode,
        "headers": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in headers.items()},
        "body": body.decode("utf-8"),
    }
    document = json.loads(body, parse_float=Decimal)
    if body_format in ("cloudevents", "cloudevents-binary"):
        message = RabbitMQMessage(headers=headers, content_type=properties.content_type, body=body)
        event = from_rabbitmq(message, JSONFormat())  # raises CloudEventValidationError if invalid
        report["cloudevent"] = {
            "specversion": event.get_specversion(), "id": event.get_id(), "source": event.get_source(),
            "type": event.get_type(), "subject": event.get_subject(), "time": event.get_time().isoformat(),
            "datacontenttype": event.get_datacontenttype(),
        }
        data = document["data"] if body_format == "cloudevents" else document
        report["sdk_data_matches"] = sdk_matches(event.get_data(), data)
    elif body_format == "envelope":
        data = document["data"]
    elif body_format == "nestjs":
        if set(document) != {"pattern", "data"}:
            fail(f"not a NestJS event packet: {sorted(document)}")
        report["pattern"] = document["pattern"]
        data = document["data"]
    elif body_format == "payload":
        data = document
    else:
        fail(f"unknown format {body_format}")
    report["order"] = order_of(data)
    return report


def main(argv):
    args = list(argv)
    count, timeout = 1, 20.0
    if "--count" in args:
        i = args.index("--count")
        count = int(args[i + 1])
        del args[i:i + 2]
    if "--timeout" in args:
        i = args.index("--timeout")
        timeout = float(args[i + 1])
        del args[i:i + 2]
    if len(args) < 2:
        fail(__doc__)
    url, reads = args[0], [a.split("=", 1) for a in args[1:]]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue, body_format in reads:
            for _ in range(count):
                print(json.dumps(read(channel, queue, body_format, timeout)), flush=True)
    finally:
        connection.close()


if __name__ == "__main__":
    main(sys.argv[1:])
