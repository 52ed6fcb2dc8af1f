# shellcheck shell=bash
# Shared by demo.sh and bench.sh (sourced, not run): the worker processes they start.
#
# Callers append each worker's pid to PIDS and define `note` (prints one indented line).

PIDS=()

# SIGTERM every worker, give each up to 30 s to drain and exit (the worker finishes and acks
# what it holds), SIGKILL stragglers, and report each exit code. Idempotent.
stop_worker_processes() {
    ((${#PIDS[@]} > 0)) || return 0
    local i pid rc deadline
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 30))
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            note "worker $((i + 1)) (pid $pid) still running after 30 s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rc=0
        wait "$pid" 2>/dev/null || rc=$?
        if ((rc == 0)); then
            note "worker $((i + 1)) (pid $pid) exited with code 0 (clean shutdown)"
        else
            note "worker $((i + 1)) (pid $pid) exited with code $rc"
        fi
    done
    PIDS=()
}
