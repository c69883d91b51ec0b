#!/usr/bin/env bash
# One tuning study on PostgreSQL (issue 17): the same TRIALS-trial MNIST study (Mono-Forward, EPOCHS epochs
# per trial) run by 1 worker, then by 2 workers started as two machines would start them (two `tune`
# commands, each with its own --out, on one database), on a throw-away PostgreSQL cluster on this machine.
# Prints the wall-clock of each, trials per minute and the best validation accuracy.
# Usage: LOCALEARN_DATA=../shared/data bash benchmarks/tune_postgres.sh [extra tune options]
#   TRIALS (12), EPOCHS (2), ALGO (mono_forward), DATASET (mnist), OUT (benchmarks/out/tune_postgres),
#   OMP_NUM_THREADS (1: one core per worker), PGBIN (initdb's directory, found if unset)
# Needs the Debian package postgresql and `pip install -e '.[postgres]'`.
set -euo pipefail
trials=${TRIALS:-12}
epochs=${EPOCHS:-2}
algo=${ALGO:-mono_forward}
dataset=${DATASET:-mnist}
out=${OUT:-benchmarks/out/tune_postgres}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python=${PYTHON:-python}

bin=${PGBIN:-$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")")}
[ -x "$bin/pg_ctl" ] || { echo "no PostgreSQL (initdb, pg_ctl): apt-get install postgresql" >&2; exit 1; }

# The cluster: a temporary directory, a free port on 127.0.0.1, trust for local connections; stopped and
# removed on exit, however the script ends. PostgreSQL will not run as root: then it runs as `postgres`.
cluster=$(mktemp -d /tmp/localearn-pg-XXXXXX)
as_owner=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$cluster"
  as_owner=(runuser -u postgres --)
fi
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
  "${as_owner[@]}" "$bin/pg_ctl" -D "$cluster/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$cluster"
}
trap stop EXIT
"${as_owner[@]}" "$bin/initdb" -D "$cluster/data" -U postgres -A trust -E UTF8 >/dev/null
"${as_owner[@]}" "$bin/pg_ctl" -D "$cluster/data" -l "$cluster/server.log" -w \
  -o "-p $port -k $cluster -c listen_addresses=127.0.0.1" start >/dev/null
rm -rf "$out"

tune() {  # tune DATABASE OUT: one `tune` command on the study in DATABASE
  "$python" -m localearn.experiments tune "$dataset" --algo "$algo" --trials "$trials" --epochs "$epochs" \
    --no-energy -q --out "$2" --storage "postgresql+psycopg://postgres@127.0.0.1:$port/$1" "${@:3}"
}

run() {  # run WORKERS [extra tune options]: a fresh database, WORKERS tune commands at once, timed
  local workers=$1 database="workers$1" start end pids=()
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$database"
  start=$(date +%s.%N)
  for i in $(seq 1 "$workers"); do
    tune "$database" "$out/$workers-workers/machine$i" "${@:2}" >"$out/$workers-workers-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { tail -5 "$out/$workers-workers-$((i + 1)).log" >&2; exit 1; }
  done
  end=$(date +%s.%N)
  "$python" - "postgresql+psycopg://postgres@127.0.0.1:$port/$database" "$dataset-$algo" "$workers" \
    "$start" "$end" <<'PY'
import sys

import optuna

url, name, workers, start, end = sys.argv[1:]
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=name, storage=url)
states = [t.state for t in study.trials]
done = sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
seconds = float(end) - float(start)
print(
    f"{workers} worker(s): {done} finished trials ({states.count(optuna.trial.TrialState.PRUNED)} pruned, "
    f"{states.count(optuna.trial.TrialState.FAIL)} failed) in {seconds:.1f} s, "
    f"{done / seconds * 60:.2f} trials/min, best validation accuracy {study.best_value:.4f} "
    f"(trial {study.best_trial.number})"
)
PY
}

mkdir -p "$out"
echo "$dataset $algo: $trials trials of $epochs epochs, OMP_NUM_THREADS=$OMP_NUM_THREADS per worker," \
  "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
run 1 "$@"
run 2 "$@"
