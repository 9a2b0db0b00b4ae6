#!/usr/bin/env bash
# `make run`: the sandbox, the CRDs, the operator, and a demo experiment run to the end.
# With the sandbox's real node (`make run` as root): the shop as real pods
# (deploy/demo-real/), a node agent for the real node beside the operator, and what the
# shop's users see printed while the attacks go on; else the shop on kwok's fake nodes
# (deploy/demo/). The operator keeps running in the foreground afterwards (Ctrl-C stops
# it); DEMO_EXIT=1 stops it after the report instead.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/.venv/bin
eval "$("$BIN/shakeout" sandbox env)"
export PATH=$BIN:$PATH   # kubectl finds the kubectl-shakeout plugin here
LOG=$ROOT/.cache/operator.log
AGENT_LOG=$ROOT/.cache/agent.log
mkdir -p "$(dirname "$LOG")"
REAL_NODE=$("$BIN/shakeout" sandbox status | python3 -c \
  'import json, sys; print(json.load(sys.stdin).get("realNode", {}).get("name", ""))')

kubectl apply -k "$ROOT/deploy/crds"
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl apply -k "$ROOT/deploy/rbac"
kubectl apply -k "$ROOT/deploy/sandbox"
# The operator's namespace: its runs' rollback records (deploy/base creates it in a cluster).
kubectl create namespace shakeout-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "starting the operator (log: $LOG)"
"$BIN/shakeout" operator --liveness "http://127.0.0.1:$PORT/healthz" >"$LOG" 2>&1 &
OPERATOR=$!
AGENT=
PROBE=
# The agent rolls back whatever it still holds when it is stopped (SIGTERM).
trap 'kill $PROBE $AGENT $OPERATOR 2>/dev/null; wait $PROBE $AGENT $OPERATOR 2>/dev/null' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  kill -0 $OPERATOR 2>/dev/null || { tail -20 "$LOG"; exit 1; }
  sleep 0.3
done
until kubectl get validatingwebhookconfiguration shakeout.dev >/dev/null 2>&1; do sleep 0.3; done

if [ -n "$REAL_NODE" ]; then
  # The node agent of the real node, as a host process (in a cluster: the DaemonSet).
  echo "starting the node agent of $REAL_NODE (log: $AGENT_LOG)"
  "$BIN/shakeout" agent --node="$REAL_NODE" --locator=runtime \
    --journal="$ROOT/.cache/agent-journal.json" >"$AGENT_LOG" 2>&1 &
  AGENT=$!
  until [ -n "$(kubectl get lease "shakeout-agent-$REAL_NODE" -n shakeout-system \
      -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)" ]; do
    kill -0 $AGENT 2>/dev/null || { tail -20 "$AGENT_LOG"; exit 1; }
    sleep 0.3
  done
  kubectl apply -f "$ROOT/deploy/demo-real/"
  kubectl -n team-a rollout status deployment/shop --timeout=120s
else
  kubectl apply -f "$ROOT/deploy/demo/"
  kubectl -n team-a rollout status deployment/shop --timeout=60s
fi
# A previous demo may still hold the lock: wait until no run is active.
until [ -z "$(kubectl get chaosswitch default -o jsonpath='{.status.activeRun.name}')" ]; do sleep 1; done
echo
if [ -n "$REAL_NODE" ]; then
  SHOP=$(kubectl -n team-a get service shop -o jsonpath='{.spec.clusterIP}')
  echo "What the shop's users see (GETs through the Service shop, every 2 s: pod answers x median latency):"
  "$BIN/python" "$ROOT/tools/demo_probe.py" "http://$SHOP/" &
  PROBE=$!
  sleep 2.5
fi
kubectl shakeout run shop-resilience -n team-a --wait || true
if [ -n "$PROBE" ]; then kill $PROBE 2>/dev/null; wait $PROBE 2>/dev/null || true; PROBE=; fi
echo
echo "The operator keeps running. In another shell:"
echo "  eval \"\$(.venv/bin/shakeout sandbox env)\"; export PATH=\$PWD/.venv/bin:\$PATH"
echo "  kubectl get chaos -A; kubectl shakeout list -A; kubectl shakeout stop-all"
[ "${DEMO_EXIT:-0}" = 1 ] && exit 0
wait $OPERATOR
