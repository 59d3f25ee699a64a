#!/usr/bin/env bash
# GPU check, one command, at most ~8 minutes on one GPU, nothing fetched from the network:
#   1. installs the cp312 wheels carried in .whl/ (see scripts/fetch_gpu_wheels.sh) next to the
#      machine's own torch;
#   2. runs zipformer_tiny through k2ssl-hydra-train on CUDA with common.amp=true and with
#      common.bf16=true (a few updates each, ScaledAdam/Eden as in the presets);
#   3. runs the Base-size A/B benchmark at the recipe batch sizes (Zipformer 600 s, HuBERT 87.5 s of
#      audio per GPU) and the loader benchmark;
#   4. writes everything to benchmarks/results/gpu_<date>_<gpu>/ (JSON, Markdown, plots, logs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/k2ssl_site .whl/*.whl
  export PYTHONPATH="/tmp/k2ssl_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
gpu=$(python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
out="benchmarks/results/gpu_$(date -u +%Y%m%d)_${gpu}"
work=$(mktemp -d)
mkdir -p "$out"
echo "== GPU: $gpu; results in $out"

echo "== corpus (generated; 200 utterances of 4-16 s)"
python3 -c "from k2ssl_fairseq.testing import make_tiny_corpus; make_tiny_corpus('$work/data', splits={'train': 200, 'valid': 8}, min_seconds=4, max_seconds=16)"

for precision in "common.amp=true" "common.bf16=true"; do
  echo "== zipformer_tiny on CUDA with $precision"
  python3 -m k2ssl_fairseq.cli --config-dir "$PWD/config/pretrain" --config-name zipformer_tiny \
    hydra.run.dir="$work/smoke_${precision%%=*}" checkpoint.save_dir="$work/smoke_${precision%%=*}/ckpt" \
    common.user_dir="$PWD/k2ssl_fairseq" task.data="$work/data" task.label_dir="$work/data" \
    common.cpu=false "$precision" optimization.max_update=6 2>&1 | tee "$out/smoke_${precision%%=*}.log" | grep -E "train_inner|Error" || true
  grep -q '"num_updates": "6"' "$out/smoke_${precision%%=*}.log" || { echo "CUDA smoke run with $precision failed"; exit 1; }
done

echo "== Base A/B benchmark at recipe batch sizes"
python3 -m k2ssl_fairseq.benchmark --data "$work/data" --label-dir "$work/data" --size base --device cuda \
  --updates 6 --warmup 2 --out "$out/ab_base"

echo "== CNN front-end: fairseq's module vs conv_frontend (CUDA, 8 x 15 s)"
python3 benchmarks/bench_frontend.py --device cuda --batch 8 --seconds 15 --repeats 2 \
  --output "$out/frontend_cuda.json" 2>&1 | tail -3
if [ -f benchmarks/bench_loader.py ]; then
  echo "== loader benchmark"
  python3 benchmarks/bench_loader.py --out "$out/loader.json" 2>&1 | tail -20
fi
echo "== done: $out"
