#!/usr/bin/env bash
# CUDA checks of rlgauge on a lent GPU machine (CUDA torch, no network): issue 15's "with a GPU
# visible" checks, issue 17's compile modes on CUDA (in pytest -m gpu) and issue 18's Triton
# kernel (compiled, no interpreter) and its bench table, in one prepared run. Not run by CI.
#
# Usage, from the project root on that machine:
#   bash .ci/gpu_check.sh WHEEL_DIR [OUT_DIR]
# WHEEL_DIR holds py3.x wheels of what the machine lacks (tensordict, torchrl, gymnasium, mujoco,
# pygame and their small deps); they go to /tmp/site, not over the machine's torch. dm_control,
# envpool and asv may be absent: their cases skip or fail as "unavailable".
# Writes OUT_DIR/{buildext,doctor,train,pytest_gpu,pytest_triton,bench_gae_cuda,pytest_fast}.txt
# and prints the failures.
set -u
wheels=${1:?wheel folder}; out=${2:-gpu-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$wheels"/*.whl || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-disable} \
  SDL_VIDEODRIVER=dummy RL_LOGGING_LEVEL=WARNING
python3 -c "import torch,torchrl,tensordict;print('torch',torch.__version__,'torchrl',torchrl.__version__,'tensordict',tensordict.__version__,'cuda',torch.cuda.is_available())"
MAX_JOBS=$(nproc) timeout 200 python3 -m harness build-ext >"$out/buildext.txt" 2>&1; tail -1 "$out/buildext.txt"
timeout 90 python3 -m harness doctor >"$out/doctor.txt" 2>&1; echo "doctor rc $?"
grep -E "CUDA|GPU|gymnasium on|torchrl extension|provenance" "$out/doctor.txt"
timeout 240 python3 -m harness train ppo --backend gymnasium --task cartpole --device cuda \
  --frames 20000 --out "$out/runs" >"$out/train.txt" 2>&1; echo "train on cuda rc $?"
head -3 "$out/train.txt"
n=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider -n "$n" -rfE >"$out/pytest_gpu.txt" 2>&1
echo "pytest -m gpu rc $?"; grep -E "^(FAILED|ERROR)" "$out/pytest_gpu.txt" | sed 's/ - .*//' | head -40
tail -1 "$out/pytest_gpu.txt"
timeout 240 python3 -m pytest -m triton -q -p no:cacheprovider -rfE >"$out/pytest_triton.txt" 2>&1
echo "pytest -m triton (compiled on the GPU) rc $?"; tail -1 "$out/pytest_triton.txt"
timeout 240 python3 -m bench.bench_gae --device cuda >"$out/bench_gae_cuda.txt" 2>&1
echo "bench_gae --device cuda rc $?"; tail -25 "$out/bench_gae_cuda.txt"
timeout 420 python3 -m pytest -m "not slow" -q -p no:cacheprovider -n "$n" -rfE >"$out/pytest_fast.txt" 2>&1
echo "pytest -m 'not slow' rc $?"; grep -E "^(FAILED|ERROR)" "$out/pytest_fast.txt" | sed 's/ - .*//' | head -60
tail -1 "$out/pytest_fast.txt"
