# The occluded state's cost and the presence weight, on the calibration clips only (seeds 500000-500011 at 12
# frames, 500000-500005 at 48 frames); AJ on the 12-frame clips decides, the 48-frame clips are reported.
cd "$(dirname "$0")/../../.."
P=${PYTHON:-python}
[ -f runs/tune12/tapvid_davis.pkl ] || $P benchmarks/make_tapvid_fixture.py --out runs/tune12/tapvid_davis.pkl \
    --num-videos 12 --seed-offset 500000 --frames 12 --size 256 --points 32 > /dev/null 2>&1
[ -f runs/tune48/tapvid_davis.pkl ] || $P benchmarks/make_tapvid_fixture.py --out runs/tune48/tapvid_davis.pkl \
    --num-videos 6 --seed-offset 500000 --frames 48 --size 256 --points 32 > /dev/null 2>&1
for o in -6 -9 -12; do for p in 0 1 2 4; do for T in 12 48; do
  echo "frames=$T occluded_log_cost=$o presence_weight=$p $($P benchmarks/track_ablation.py --root runs/tune$T --mode first --rows "default (temporal + dominant motion + offset)" --no-baselines --set occluded_log_cost=$o presence_weight=$p --out runs/osweep/t$T-o$o-p$p 2>/dev/null | grep AJ)"
done; done; done
