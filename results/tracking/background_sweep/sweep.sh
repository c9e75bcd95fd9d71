# The dominant-motion prior's weight and width, on the calibration clips only (seeds 500000-500011).
cd "$(dirname "$0")/../../.."
P=${PYTHON:-python}
[ -f runs/tune12/tapvid_davis.pkl ] || $P benchmarks/make_tapvid_fixture.py --out runs/tune12/tapvid_davis.pkl \
    --num-videos 12 --seed-offset 500000 --frames 12 --size 256 --points 32 > /dev/null 2>&1
for w in 0 0.3 0.5 0.7 0.9 1; do for s in 0.05 0.1 0.25; do
  echo "weight=$w sigma=$s $($P benchmarks/track_ablation.py --root runs/tune12 --mode first --rows "temporal + offset (no dominant motion)" --no-baselines --set background_weight=$w background_sigma=$s --out runs/bsweep/w$w-s$s 2>/dev/null | grep AJ)"
  [ "$w" = 0 ] && break
done; done
