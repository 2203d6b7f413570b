"""An OTLP trace receiver for the tests and ops/bench: decodes each export request with the
OpenTelemetry protocol's own protobuf classes (opentelemetry-proto) and writes one JSON line per
span to a file (attribute values as text), so a test can check parents, kinds and attributes of
what the programs exported. OTLP/HTTP by default; OTLP/gRPC with --grpc, served by grpcio with
the protocol's own service stubs (trace_service_pb2_grpc).

    python otlp_receiver.py SPANS_FILE [--grpc]    prints the port it listens on, then serves until killed

SIGUSR1 makes it a slow collector: from then on it answers each export only after 5 seconds (HTTP
503, gRPC UNAVAILABLE) and records nothing.
"""

import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KINDS = {value: name.removeprefix("SPAN_KIND_").lower() for name, value in Span.SpanKind.items()}


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def record(request):
    """Appends the request's spans to the file, one JSON line each."""
    lines = []
    for resource_spans in request.resource_spans:
        resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lines.append(json.dumps({
                    "service": resource.get("service.name"),
                    "traceId": span.trace_id.hex(), "spanId": span.span_id.hex(), "parentSpanId": span.parent_span_id.hex(),
                    "name": span.name, "kind": KINDS.get(span.kind, str(span.kind)),
                    "attributes": {a.key: str(value(a.value)) for a in span.attributes},
                    "links": [{"traceId": link.trace_id.hex(), "spanId": link.span_id.hex()} for link in span.links],
                    "status": span.status.code, "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                }))
    with open(sys.argv[1], "a") as spans:
        spans.write("".join(line + "\n" for line in lines))


SLOW = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if SLOW.is_set():
            time.sleep(5)
            self.send_response(503)
            self.end_headers()
            return
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(415)
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        record(request)
        response = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)

    def log_message(self, *args):
        pass


def serve_grpc():
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            if SLOW.is_set():
                time.sleep(5)
                context.abort(grpc.StatusCode.UNAVAILABLE, "slow collector")
            record(request)
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, lambda *_: SLOW.set())
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # a parent may have passed signals on blocked
    if "--grpc" in sys.argv[2:]:
        serve_grpc()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
