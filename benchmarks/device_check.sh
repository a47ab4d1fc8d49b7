#!/usr/bin/env bash
# One check of pdefm on a GPU machine, in under 8 minutes, written to one JSON summary:
#   gpu_tests  the test suite's GPU-marked tests (pytest -m gpu)
#   op_count   aten ops per Poseidon-B train step (bench_model.py --count-ops; fake tensors, no GPU needed)
#   model      bench_model.py --device cuda --dtype bf16 --preset B --compile: step times, share of bf16 peak
#   pretrain   a generated 128^2 corpus, then 200 bf16 pretraining steps of Poseidon-T: throughput
#   physguard  PhysGuard fine-tuning of Poseidon-B (Fisher bases, then training): peak device and host memory
#   solvers    every solver family's CUDA throughput (bench_solvers.py)
# Every section runs under its own time limit; a failing section is recorded (status, exit code, log tail) and
# the next one runs. --dry-run runs it all on the CPU at tiny sizes (about a minute), so CI keeps it working.
#
#   bash benchmarks/device_check.sh [--dry-run] [SUMMARY_PATH]   (default: $OUT/summary.json, else
#                                                                 device_check/summary.json)
set -uo pipefail

DRY_RUN=0
SUMMARY=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) SUMMARY="$arg" ;;
    esac
done
if [[ -z "$SUMMARY" ]]; then
    if [[ -n "${OUT:-}" ]]; then SUMMARY="$OUT/summary.json"; else SUMMARY="device_check/summary.json"; fi
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pdefm-device-check.XXXXXX")"
mkdir -p "$(dirname "$SUMMARY")"
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1

if ((DRY_RUN)); then
    DEVICE=cpu DTYPE=fp32 PRECISION=no
    MODEL_ARGS=(--preset tiny --size 32 --batch 2 --repeats 1 --warmup 0)
    OPS_ARGS=(--preset tiny --size 32)
    RES=32 FAMILIES=ns_sines,ns_gauss TRAJ=4 SNAPS=3
    PRE_ARGS=(--preset tiny --image-size 32 --max-steps 4 --batch-size 2)
    PG_PRESET=tiny PG_ARGS=(--shots 2 --max-steps 2 --batch-size 2 --fisher-samples 4 --max-rank 4)
    SOLVER_ARGS=(--resolution 16 --batch 2 --snapshots 2)
    LIMITS=(gpu_tests=120 op_count=120 model=120 pretrain=180 physguard=180 solvers=180)
else
    DEVICE=cuda DTYPE=bf16 PRECISION=bf16
    MODEL_ARGS=(--preset B --batch 32 --compile)
    OPS_ARGS=(--preset B)
    RES=128 FAMILIES=ns_sines,ns_gauss TRAJ=32 SNAPS=5
    PRE_ARGS=(--preset T --max-steps 200 --batch-size 32)
    PG_PRESET=B PG_ARGS=(--shots 4 --max-steps 20 --batch-size 8 --fisher-samples 64)
    SOLVER_ARGS=(--resolution 128 --batch 16 --snapshots 5)
    LIMITS=(gpu_tests=75 op_count=45 model=140 pretrain=100 physguard=70 solvers=50)  # 480 s at most
fi

limit() { for kv in "${LIMITS[@]}"; do [[ "${kv%%=*}" == "$1" ]] && echo "${kv#*=}"; done; }

SHARED=(PY WORK DEVICE PRECISION RES FAMILIES TRAJ SNAPS PRE_ARGS PG_PRESET PG_ARGS)

# run NAME CMD...: run CMD (a command, or a function of this script) under NAME's time limit; its log, exit code
# and seconds land in $WORK/NAME.*
run() {
    local name="$1"; shift
    local start=$SECONDS
    echo "== $name (limit $(limit "$name") s): $*"
    if declare -F "$1" >/dev/null; then
        set -- bash -c "$(declare -p "${SHARED[@]}"); $(declare -f "$1"); $1"
    fi
    timeout --kill-after=10 "$(limit "$name")" "$@" >"$WORK/$name.log" 2>&1
    echo $? >"$WORK/$name.rc"
    echo $((SECONDS - start)) >"$WORK/$name.seconds"
    echo "   exit $(cat "$WORK/$name.rc") after $(cat "$WORK/$name.seconds") s"
}

START=$SECONDS
run gpu_tests "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/

run op_count "$PY" benchmarks/bench_model.py --count-ops "${OPS_ARGS[@]}" --json "$WORK/op_count.json"

run model "$PY" benchmarks/bench_model.py --device "$DEVICE" --dtype "$DTYPE" "${MODEL_ARGS[@]}" \
    --json "$WORK/model.json"

pretrain() {
    local t0=$SECONDS
    "$PY" -m eval_suite.command_line data generate --out "$WORK/corpus" --families "$FAMILIES" \
        --trajectories "$TRAJ" --resolution "$RES" --snapshots "$SNAPS" --shard-size 8 --device "$DEVICE" || return
    echo "generate_seconds=$((SECONDS - t0))"
    t0=$SECONDS
    "$PY" -m eval_suite.command_line pretrain --corpus "$WORK/corpus" "${PRE_ARGS[@]}" --out "$WORK/pretrain" \
        --mixed-precision "$PRECISION" --device "$DEVICE" --log-every 50 --checkpoint-every 100000 \
        --log-with none --no-progress || return
    echo "pretrain_seconds=$((SECONDS - t0))"
}
run pretrain pretrain

physguard() {
    "$PY" - "$WORK" "$PG_PRESET" "$DEVICE" "$PRECISION" "${PG_ARGS[@]}" <<'EOF'
"""Save a fresh model of the preset, fine-tune it with PhysGuard in this process, report peak memory."""
import json, resource, sys, time
import torch
from foundation.configuration_scot import ScOTConfig
from foundation.modeling_scot import ScOT
work, preset, device, precision, *extra = sys.argv[1:]
size = 128 if preset != "tiny" else 32
ScOT(ScOTConfig.from_preset(preset, image_size=size)).save_pretrained(f"{work}/pg_model")
corpus = f"{work}/corpus"
argv = ["pdefm", "finetune", "--method", "physguard", "--model", f"{work}/pg_model", "--data", corpus,
        "--sim-data", corpus, "--out", f"{work}/physguard", "--device", device, "--mixed-precision", precision,
        "--val", "1", "--test", "1", *extra]
sys.argv = argv
from eval_suite.command_line import main
start, code = time.time(), 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
report = {"exit": code, "finetune_seconds": time.time() - start,
          "peak_host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
if torch.cuda.is_available():
    report["peak_device_gb"] = torch.cuda.max_memory_allocated() / 2**30
print("PHYSGUARD " + json.dumps(report))
sys.exit(code)
EOF
}
run physguard physguard

run solvers "$PY" benchmarks/bench_solvers.py --device "$DEVICE" --skip-pypde "${SOLVER_ARGS[@]}"

"$PY" - "$WORK" "$SUMMARY" "$DRY_RUN" "$((SECONDS - START))" "${PRE_ARGS[@]}" <<'EOF'
"""Assemble the sections' logs and JSON files into one summary."""
import json, platform, re, sys
from pathlib import Path
import torch
work, summary, dry_run, wall, *pre_args = sys.argv[1:]
work = Path(work)

def section(name):
    log = (work / f"{name}.log").read_text(errors="replace") if (work / f"{name}.log").exists() else ""
    rc = int((work / f"{name}.rc").read_text()) if (work / f"{name}.rc").exists() else None
    out = {"status": "ok" if rc == 0 else ("timeout" if rc in (124, 137) else "failed"), "exit_code": rc,
           "seconds": int((work / f"{name}.seconds").read_text()) if (work / f"{name}.seconds").exists() else None}
    if rc != 0:
        out["log_tail"] = log.splitlines()[-25:]
    return out, log

def flag(args, name):
    return int(args[args.index(name) + 1])

sections = {}
s, log = section("gpu_tests")
found = re.findall(r"^=*\s*(.*(?:passed|failed|skipped|deselected|error).*?)\s*=*$", log, re.M)
s["result"] = found[-1] if found else None
if s["exit_code"] == 5:  # pytest: no tests collected / all deselected
    s["status"] = "ok"
sections["gpu_tests"] = s
for name in ("op_count", "model"):
    s, _ = section(name)
    if (work / f"{name}.json").exists():
        s["results"] = json.loads((work / f"{name}.json").read_text())["results"]
    sections[name] = s
s, log = section("pretrain")
values = dict(re.findall(r"^(\w+_seconds)=(\d+)$", log, re.M))
steps, batch = flag(pre_args, "--max-steps"), flag(pre_args, "--batch-size")
s.update(steps=steps, batch=batch, preset=pre_args[pre_args.index("--preset") + 1],
         generate_seconds=int(values.get("generate_seconds", -1)))
if "pretrain_seconds" in values:
    seconds = int(values["pretrain_seconds"])
    s.update(pretrain_seconds=seconds, samples_per_s_incl_startup=steps * batch / max(seconds, 1))
sections["pretrain"] = s
s, log = section("physguard")
found = re.findall(r"^PHYSGUARD (\{.*\})$", log, re.M)
if found:
    s.update(json.loads(found[-1]))
sections["physguard"] = s
s, log = section("solvers")
s["trajectories_per_s"] = {m[0]: float(m[1]) for m in re.findall(r"^(\w+)\s+([\d.]+) traj/s", log, re.M)}
sections["solvers"] = s
result = {
    "dry_run": dry_run == "1",
    "wall_seconds": int(wall),
    "machine": {"host": platform.node(), "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    "sections": sections,
}
Path(summary).write_text(json.dumps(result, indent=2))
print(json.dumps({k: v.get("status") for k, v in sections.items()}), "->", summary)
EOF
