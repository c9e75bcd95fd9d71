# The occluded state's cost and the presence weight, on calibration clips only: seeds 500000-500031, 12
# frames ('first'). AJ decides.
cd "$(dirname "$0")/../../.."
P=${PYTHON:-python}
[ -f runs/tune32/tapvid_davis.pkl ] || $P benchmarks/make_tapvid_fixture.py --out runs/tune32/tapvid_davis.pkl \
    --num-videos 32 --seed-offset 500000 --frames 12 --size 256 --points 32 > /dev/null 2>&1
for o in -6 -9; do for p in 0 1 2 4; do
  echo "occluded_log_cost=$o presence_weight=$p $($P benchmarks/track_ablation.py --root runs/tune32 --mode first --rows "default (temporal + dominant motion + offset)" --no-baselines --set occluded_log_cost=$o presence_weight=$p --out runs/osweep/t32-o$o-p$p 2>/dev/null | grep AJ)"
done; done
$P benchmarks/track_ablation.py --root runs/tune32 --mode first --rows "default (temporal + dominant motion + offset)" --out runs/osweep/t32-baselines 2>/dev/null | grep -E "zero|lucas"
