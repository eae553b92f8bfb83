#!/usr/bin/env bash
# The whole method, stage by stage, on a train file; then the test file predicted and scored.
#
#   bash run_all.sh                                 # the embedded default: data/ and the packaged MiniLM
#   bash run_all.sh --train T.json --test E.json --model bert-base-uncased --k 10 --out runs/mine
#   bash run_all.sh --k auto      # K estimated without labels from the Siamese features (estimate_k.py)
#
# Every setting is a flag or an environment variable of the same name in capitals (TRAIN, TEST, MODEL,
# K, POOLING, SIAMESE_EPOCHS, CLUSTER_EPOCHS, TRAIN_LAYERS, MAX_LENGTH, PRECISION, SEED, OUT, PYTHON,
# QUIET).  Each stage prints what it read and wrote; the last lines are the table that compares the method with the
# reference points.
set -euo pipefail
cd "$(dirname "$0")"

TRAIN=${TRAIN:-data/train.json}
TEST=${TEST:-data/test.json}
MODEL=${MODEL:-}                  # empty: the packaged all-MiniLM-L6-v2
K=${K:-10}                        # auto: estimated by train_cluster.py, without labels (estimate_k.py)
POOLING=${POOLING:-both}          # how r is pooled: both, sumdiff, markers or spans (encode.py; README, "Choices")
SIAMESE_EPOCHS=${SIAMESE_EPOCHS:-3}
CLUSTER_EPOCHS=${CLUSTER_EPOCHS:-3}
TRAIN_LAYERS=${TRAIN_LAYERS:-2}   # top encoder layers trained; 0: all (README, "Choices")
MAX_LENGTH=${MAX_LENGTH:-128}
PRECISION=${PRECISION:-fp32}    # bf16: the encoder under bf16 autocast (README, "Speed")
SEED=${SEED:-0}
OUT=${OUT:-runs/default}
PYTHON=${PYTHON:-python}
QUIET=${QUIET:-}                  # non-empty: no progress bars

while [ $# -gt 0 ]; do
  case "$1" in
    --train) TRAIN=$2 ;;
    --test) TEST=$2 ;;
    --model) MODEL=$2 ;;
    --k) K=$2 ;;
    --pooling) POOLING=$2 ;;
    --siamese-epochs) SIAMESE_EPOCHS=$2 ;;
    --cluster-epochs) CLUSTER_EPOCHS=$2 ;;
    --train-layers) TRAIN_LAYERS=$2 ;;
    --max-length) MAX_LENGTH=$2 ;;
    --precision) PRECISION=$2 ;;
    --seed) SEED=$2 ;;
    --out) OUT=$2 ;;
    --quiet) QUIET=1; shift; continue ;;
    *) echo "run_all.sh: unknown option $1 (see the top of run_all.sh)" >&2; exit 2 ;;
  esac
  shift 2
done

Q=${QUIET:+--quiet}
start=$(date +%s)
echo "run_all: train=$TRAIN test=$TEST model=${MODEL:-packaged all-MiniLM-L6-v2} k=$K pooling=$POOLING" \
     "siamese_epochs=$SIAMESE_EPOCHS cluster_epochs=$CLUSTER_EPOCHS train_layers=$TRAIN_LAYERS max_length=$MAX_LENGTH precision=$PRECISION seed=$SEED out=$OUT"

# 1. encode: markers, tokens, positions (and the frozen encoder's features, a reference point); the test
#    file takes the training run's markers, tokenizer and pooling
$PYTHON encode.py "$TRAIN" --out "$OUT/train" --max-length "$MAX_LENGTH" --features --pooling "$POOLING" \
        --precision "$PRECISION" ${MODEL:+--model "$MODEL"} $Q
$PYTHON encode.py "$TEST" --out "$OUT/test" --max-length "$MAX_LENGTH" --features --precision "$PRECISION" --tokenizer-from "$OUT/train" $Q
# 2. Siamese representation learning (the warm-up)
$PYTHON train_siamese.py --data "$OUT/train" --out "$OUT/siamese" --epochs "$SIAMESE_EPOCHS" \
        --train-layers "$TRAIN_LAYERS" --precision "$PRECISION" --seed "$SEED" $Q
# 3. neighbours in the Siamese feature space
$PYTHON mine_neighbors.py "$OUT/siamese"
# 4. relational semantic clustering, jointly with the Siamese loss
$PYTHON train_cluster.py --data "$OUT/train" --init "$OUT/siamese" --out "$OUT/cluster" --k "$K" \
        --epochs "$CLUSTER_EPOCHS" --train-layers "$TRAIN_LAYERS" --precision "$PRECISION" --seed "$SEED" $Q
# 5. the trained models applied to the test file
$PYTHON predict.py --model "$OUT/cluster" --data "$OUT/test" --out "$OUT/test_cluster" --precision "$PRECISION" $Q
$PYTHON predict.py --model "$OUT/siamese" --data "$OUT/test" --out "$OUT/test_siamese" --precision "$PRECISION" $Q
# 6. what each cluster holds, to read, labels or not: report.md and clusters.jsonl beside the clusters
$PYTHON report.py "$OUT/cluster"
$PYTHON report.py "$OUT/test_cluster"
# 7. scores on the test file: the method beside k-means on each stage's features, type-pair grouping and
#    the label-free linear baseline fitted on the training file (--lda-from)
$PYTHON evaluate.py "$OUT/test_cluster" "$OUT/test_siamese" "$OUT/test" --k "$K" --seed "$SEED" \
        --lda-from "$OUT/train" --out "$OUT/metrics.json"
echo "run_all: done in $(( $(date +%s) - start ))s; table in $OUT/metrics.json;" \
     "clusters in $OUT/cluster/report.md and $OUT/test_cluster/report.md (and clusters.jsonl beside them)"
