#!/usr/bin/env bash
# Issue 15's GPU acceptance in one short run on a machine with one CUDA GPU:
#   1. the CUDA tests: the bundled demo's picks on CUDA equal CPU picks (one sample, 1e-3),
#      with and without the forward worker;
#   2. bench/throughput.py at batch 1024, 500 stations x 300 s, stride 10 s: rtpick with the
#      forward worker, as one instance and as 4 and 8 instances sharing the GPU (the sharded
#      deployment), against SeisBench annotate and the raw fp32 forward, same run, interleaved.
# Each step has its own time limit so that one hang still leaves the other's output.
# Usage: bash bench/gpu_acceptance.sh [LOG]   (needs rtpick's dependencies importable and
# ../shared/seisbench-cache, as for the tests)
set -u
log=${1:-/dev/null}
export PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    python3 -c 'import torch, numpy, numba, obspy, seisbench; print("torch", torch.__version__, "numpy", numpy.__version__, "numba", numba.__version__, "obspy", obspy.__version__, "seisbench", seisbench.__version__)'
    # -W default: the image's newer numpy/torch may warn where the CI versions do not; warnings are shown, not errors
    timeout 150 python3 -m pytest -q -p no:cacheprovider -W default -rs \
        tests/test_forward_worker.py tests/test_backends.py -k cuda
    echo "pytest exit: $?"
    timeout 330 python3 bench/throughput.py --device cuda --stations 500 --seconds 300 --batch 1024 \
        --backend eager --forward-worker on --shards 1 4 8 --strides 10 --repeats 3 --threads "$(nproc)" --rss-stations
    echo "throughput exit: $?"
} 2>&1 | tee "$log"
