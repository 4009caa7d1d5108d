#!/usr/bin/env python3
"""A stand-in for the Kubernetes API server, for the smoke run only (run.sh).

It answers the two requests kube-runtime's watcher makes for EndpointSlices: the list
(one slice, `echo-a`, with replica A ready) and the watch, on which it then plays a
script: A and B ready; A not ready (terminating); slice deleted. Plain HTTP, no auth.
It is NOT a real API server: it checks no RBAC, sends no bookmarks and knows nothing of
resource-version expiry. Usage: fake-apiserver.py PORT IP_A IP_B MCP_PORT
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PORT, IP_A, IP_B, MCP_PORT = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
PATH = "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"
SELECTOR = "kubernetes.io/service-name=echo"


def endpoint(ip, ready):
    return {"addresses": [ip], "conditions": {"ready": ready, "serving": ready,
                                              "terminating": not ready},
            "targetRef": {"kind": "Pod", "name": "echo-" + ip.split(".")[-1]}}


def slice_(rv, endpoints):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-a", "namespace": "prod", "resourceVersion": str(rv),
                         "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9090, "protocol": "TCP"},
                      {"name": "mcp", "port": MCP_PORT, "protocol": "TCP"}],
            "endpoints": endpoints}


class Handler(BaseHTTPRequestHandler):
    watches = 0

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-apiserver: " + (fmt % args) + "\n")

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path != PATH or query.get("labelSelector") != [SELECTOR]:
            self.send_error(404)
            return
        if query.get("watch") != ["true"]:
            body = json.dumps({"apiVersion": "discovery.k8s.io/v1",
                               "kind": "EndpointSliceList",
                               "metadata": {"resourceVersion": "10"},
                               "items": [slice_(10, [endpoint(IP_A, True)])]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # The watch: a body that ends when the connection closes (HTTP/1.0 style).
        Handler.watches += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if Handler.watches == 1:
            script = [
                ("MODIFIED", slice_(11, [endpoint(IP_A, True), endpoint(IP_B, True)])),
                ("MODIFIED", slice_(12, [endpoint(IP_A, False), endpoint(IP_B, True)])),
                ("DELETED", slice_(13, [endpoint(IP_B, True)])),
            ]
            for kind, obj in script:
                time.sleep(3)
                sys.stderr.write(f"fake-apiserver: sending {kind} rv {obj['metadata']['resourceVersion']}\n")
                self.wfile.write((json.dumps({"type": kind, "object": obj}) + "\n").encode())
                self.wfile.flush()
        time.sleep(60)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
