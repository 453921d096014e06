#!/bin/bash
# kaolin for real, on the GPU machine: build NVIDIA kaolin from source (CUDA 13 nvcc, torch 2.11; ~1 min 45 s
# with 16 jobs), run the backend-agreement tests, then time the X-Mesh iteration with each renderer. ~4 min.
#
# Prepare here first (both folders are ignored by git):
#   python tools/prepare_kaolin.py                              # .kaolin/: sources + plyfile wheel + stubs, 3.6 MB
#   python tools/pack_mit30.py ../shared/data/mit30 .mit30      # optional: .mit30/horse.npz etc., 4.2 MB
# Run from the repository root, carrying .kaolin (and .mit30 for the dense MIT-30 horse; without it the
# benchmark uses the default torus). No diffusers or trimesh is needed:
#   bash tools/gpu/kaolin_xmesh.sh
#
# Files written to $OUT (5): kaolin_build.log (tail of the build), kaolin_tests.log (pytest -k kaolin),
#   bench_torch.md, bench_kaolin.md (Markdown blocks for benchmarks/RESULTS.md), kaolin_env.txt
set -uo pipefail
OUT=${OUT:-$PWD/outputs/gpu-kaolin}
K=$PWD/.kaolin
SITE=${KAOLIN_SITE:-/tmp/kaolin-site}
mkdir -p "$OUT"
[ -d "$K/src/kaolin" ] || { echo "error: $K/src/kaolin missing: run python tools/prepare_kaolin.py here first"; exit 1; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nvcc --version | tail -1
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"; } > "$OUT/kaolin_env.txt" 2>&1

T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$K"/wheels/*.whl
if [ ! -f "$K/src/kaolin/_C.so" ]; then
  (cd "$K/src" && IGNORE_TORCH_VER=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
     python3 setup.py build_ext --inplace) > /tmp/kaolin-build.log 2>&1
  RC=$?
  tail -n 30 /tmp/kaolin-build.log > "$OUT/kaolin_build.log"
  [ "$RC" = 0 ] || { echo "kaolin build failed (rc $RC)"; cat "$OUT/kaolin_build.log"; exit 1; }
fi
echo "build: $(( $(date +%s) - T0 )) s" | tee -a "$OUT/kaolin_env.txt"
export PYTHONPATH=$SITE:$K/stub:$K/src:$PWD:${PYTHONPATH:-}
python3 -c "import kaolin; from attncraft.mesh.renderer import kaolin_status; print('kaolin', kaolin.__version__, kaolin_status())" \
  2>&1 | tail -1 | tee -a "$OUT/kaolin_env.txt"

python3 -m pytest -q -p no:cacheprovider tests/mesh/test_renderer.py -k kaolin -rs > "$OUT/kaolin_tests.log" 2>&1
RC_TEST=$?
tail -n 3 "$OUT/kaolin_tests.log"

MESH=default
[ -f .mit30/horse.npz ] && MESH=.mit30/horse.npz
for R in torch kaolin; do
  python3 benchmarks/bench_xmesh.py --mesh "$MESH" --device cuda --renderer $R --cpu-demo 0 > "$OUT/bench_$R.md" 2>&1
  echo "bench $R exit $?"
done
cat "$OUT/bench_kaolin.md" | tail -n 25
echo "total: $(( $(date +%s) - T0 )) s"
[ "$RC_TEST" = 0 ]
