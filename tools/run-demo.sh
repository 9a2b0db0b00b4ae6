#!/usr/bin/env bash
# `make run`: the sandbox, the CRDs, the operator, and a demo experiment run to the end.
# The operator keeps running in the foreground afterwards (Ctrl-C stops it);
# DEMO_EXIT=1 stops it after the report instead.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/.venv/bin
eval "$("$BIN/shakeout" sandbox env)"
export PATH=$BIN:$PATH   # kubectl finds the kubectl-shakeout plugin here
LOG=$ROOT/.cache/operator.log
mkdir -p "$(dirname "$LOG")"

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
trap 'kill $OPERATOR 2>/dev/null; wait $OPERATOR 2>/dev/null' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  kill -0 $OPERATOR 2>/dev/null || { tail -20 "$LOG"; exit 1; }
  sleep 0.3
done
until kubectl get validatingwebhookconfiguration shakeout.dev >/dev/null 2>&1; do sleep 0.3; done

kubectl apply -f "$ROOT/deploy/demo/"
kubectl -n team-a rollout status deployment/shop --timeout=60s
# A previous demo may still hold the lock: wait until no run is active.
until [ -z "$(kubectl get chaosswitch default -o jsonpath='{.status.activeRun.name}')" ]; do sleep 1; done
echo
kubectl shakeout run shop-resilience -n team-a --wait || true
echo
echo "The operator keeps running. In another shell:"
echo "  eval \"\$(.venv/bin/shakeout sandbox env)\"; export PATH=\$PWD/.venv/bin:\$PATH"
echo "  kubectl get chaos -A; kubectl shakeout list -A; kubectl shakeout stop-all"
[ "${DEMO_EXIT:-0}" = 1 ] && exit 0
wait $OPERATOR
