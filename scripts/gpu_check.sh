#!/usr/bin/env bash
# GPU check, one command, about 8 minutes on one H200 (first run: benchmarks/results/gpu_20261130_NVIDIA_H200), nothing fetched from the network.
#   scripts/gpu_check.sh [compile] [smoke] [frontend] [models] [fbank] [ab]     (no argument: all stages)
#   1. installs the cp312 wheels carried in .whl/ (see scripts/fetch_gpu_wheels.sh) next to the
#      machine's own torch;
#   2. runs zipformer_tiny through k2ssl-hydra-train on CUDA with common.amp=true and with
#      common.bf16=true (a few updates each, ScaledAdam/Eden as in the presets);
#   3. the CNN front-end benchmark (fairseq's module vs conv_frontend);
#   4. the Base step benchmark (benchmarks/bench_models.py: same 4 x 10 s batch for every system)
#      in fp32 and under bf16 and fp16 autocast, each step profiled, then a 16 x 15 s batch in bf16;
#   5. the fbank front-end (issue N): the same Base step for stock HuBERT and the Zipformer with the CNN
#      and with fbank at 50 and 25 Hz, under bf16 and fp16 autocast (frontend_fbank_base_cuda_*.json,
#      the GPU counterpart of benchmarks/results/frontend_fbank_base_cpu.json);
#   6. the Base-size A/B benchmark through fairseq's trainer (eager, then compiled: model.compile=true);
#   0. compile (issue 30, first so that a short lease still gets it): ops and kernel launches per step and
#      the Base step eager vs compiled (bf16) at 2 x 1 s, 87.5 s (7 x 12.5 s) and 600 s (48 x 12.5 s) of
#      audio, compiled with CUDA graphs (reduce-overhead) at 87.5 s; inductor's cache is shared by stages;
#   7. writes everything to benchmarks/results/gpu_<date>_<gpu>/ and, when $OUT is set (the device
#      tool), packs that folder into $OUT/gpu_results.tar.gz after every stage.
# Each stage has its own time limit and a failed stage does not stop the others; the exit status is
# non-zero when any stage failed, and summary.txt lists each stage's status.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/k2ssl_site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/k2ssl_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
gpu=$(python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0).replace(' ', '_'))") || exit 1
out="benchmarks/results/gpu_$(date -u +%Y%m%d)_${gpu}"
work=$(mktemp -d)
mkdir -p "$out"
failed=0
: > "$out/summary.txt"

# stage NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output in $out/NAME.log.
stage() {
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 4 "$out/$name.log"
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || failed=1
  pack
}

# pack: the results so far into $OUT (after every stage, so a run cut short still returns them).
pack() { [ -z "${OUT:-}" ] || tar -czf "$OUT/gpu_results.tar.gz" "$out"; }

{ echo "gpu: $gpu"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader;
  python3 -c "import torch, fairseq; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'fairseq', fairseq.__version__)";
  git rev-parse HEAD 2>/dev/null; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

selected=("$@")
want() { [ "${#selected[@]}" -eq 0 ] || [[ " ${selected[*]} " == *" $1 "* ]]; }

stage corpus 120 python3 -c "from k2ssl_fairseq.data.synthetic import make_tiny_corpus; make_tiny_corpus('$work/data', splits={'train': 200, 'valid': 8}, min_seconds=4, max_seconds=16)"

if want compile; then
  systems="hubert k2ssl_hubert_cosine zipformer_ssl zipformer_fbank50"
  stage compile_count_2x1s 420 python3 benchmarks/bench_models.py --device cuda --precision bf16 --batch 2 --seconds 1 \
    --modes eager compiled --count --warmup 3 --systems $systems --output "$out/compile_count_cuda_2x1s.json"
  stage compile_base_87s 420 python3 benchmarks/bench_models.py --device cuda --precision bf16 --batch 7 --seconds 12.5 \
    --modes eager compiled --count --warmup 3 --systems $systems --output "$out/compile_base_cuda_87s.json"
  stage compile_base_600s 420 python3 benchmarks/bench_models.py --device cuda --precision bf16 --batch 48 --seconds 12.5 \
    --modes eager compiled --warmup 3 --systems $systems --output "$out/compile_base_cuda_600s.json"
  stage compile_cudagraphs_87s 420 python3 benchmarks/bench_models.py --device cuda --precision bf16 --batch 7 \
    --seconds 12.5 --modes compiled --compile-mode reduce-overhead --warmup 4 --systems $systems \
    --output "$out/compile_cudagraphs_cuda_87s.json"
fi

if want smoke; then
  for precision in amp bf16; do
    stage "smoke_$precision" 150 python3 -m k2ssl_fairseq.cli --config-dir "$PWD/config/pretrain" --config-name zipformer_tiny \
      hydra.run.dir="$work/smoke_$precision" checkpoint.save_dir="$work/smoke_$precision/ckpt" \
      common.user_dir="$PWD/k2ssl_fairseq" task.data="$work/data" task.label_dir="$work/data" \
      common.cpu=false "common.$precision=true" optimization.max_update=6
    grep -q '"num_updates": "6"' "$out/smoke_$precision.log" || { echo "smoke_$precision: 6 updates not reached" | tee -a "$out/summary.txt"; failed=1; }
  done
fi

if want frontend; then
  stage frontend 90 python3 benchmarks/bench_frontend.py --device cuda --batch 8 --seconds 15 --repeats 2 \
    --output "$out/frontend_cuda.json"
fi

if want models; then
  # The CPU results' batch (4 x 10 s) in each precision, profiled; then a GPU-sized batch (16 x 15 s).
  for precision in fp32 bf16 fp16; do
    stage "models_base_$precision" 150 python3 benchmarks/bench_models.py --device cuda --precision "$precision" \
      --warmup 2 --repeats 1 --systems hubert k2ssl_hubert_cosine zipformer_ssl --profile "$out/profiles" \
      --output "$out/models_base_cuda_$precision.json"
  done
  stage models_base_bf16_16x15s 150 python3 benchmarks/bench_models.py --device cuda --precision bf16 \
    --batch 16 --seconds 15 --warmup 2 --repeats 1 --systems hubert k2ssl_hubert_cosine zipformer_ssl \
    --output "$out/models_base_cuda_bf16_16x15s.json"
fi

if want fbank; then
  for precision in bf16 fp16; do
    stage "fbank_base_$precision" 150 python3 benchmarks/bench_models.py --device cuda --precision "$precision" \
      --warmup 2 --repeats 1 --systems hubert zipformer_ssl zipformer_fbank50 zipformer_fbank25 \
      --output "$out/frontend_fbank_base_cuda_$precision.json"
  done
fi

if want ab; then
  stage ab_base 240 python3 -m k2ssl_fairseq.bench.ab --data "$work/data" --label-dir "$work/data" --size base \
    --device cuda --updates 6 --warmup 2 --repeats 1 --out "$out/ab_base"
  stage ab_base_compiled 480 python3 -m k2ssl_fairseq.bench.ab --data "$work/data" --label-dir "$work/data" --size base \
    --device cuda --seconds-per-batch 87.5 --compile --updates 6 --warmup 4 --repeats 1 --out "$out/ab_base_compiled"
fi

echo "== done: $out"
cat "$out/summary.txt"
pack
exit "$failed"
