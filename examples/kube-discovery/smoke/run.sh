#!/bin/sh
# The smoke run: kube-discovery against a fake API server (fake-apiserver.py, plain HTTP)
# and two stand-in replicas on 127.0.0.42 and 127.0.0.43. It shows the watcher's events
# reaching the fleet: A alone; A and B; B alone (A not ready); then the slice deleted,
# after which the fleet is empty and calls fail with "the fleet has no endpoints".
# Not a test of a real cluster: no RBAC, no TLS to the API server, no watch expiry.
# Needs python3. Run from examples/kube-discovery: sh smoke/run.sh
set -eu
API_PORT=${API_PORT:-18443}
MCP_PORT=${MCP_PORT:-17070}
cargo build --example replica --bin kube-discovery
target=${CARGO_TARGET_DIR:-target}/debug
tmp=$(mktemp -d)
cat > "$tmp/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "http://127.0.0.1:$API_PORT"}}]
users: [{name: nobody, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: nobody, namespace: prod}}]
current-context: fake
KC
python3 smoke/fake-apiserver.py "$API_PORT" 127.0.0.42 127.0.0.43 "$MCP_PORT" &
api=$!
"$target/examples/replica" "127.0.0.42:$MCP_PORT" "127.0.0.43:$MCP_PORT" &
replicas=$!
trap 'kill $api $replicas 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 1
KUBECONFIG="$tmp/kubeconfig" "$target/kube-discovery" --service echo --port-name mcp \
    --method who --calls 24 --every 500ms --timeout 2s
