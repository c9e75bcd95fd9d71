cd "$(dirname "$0")/../../.."
P=${PYTHON:-python}
$P benchmarks/make_tapvid_fixture.py --out runs/tune12/tapvid_davis.pkl --num-videos 12 --seed-offset 500000 --frames 12 --size 256 --points 32 > /dev/null 2>&1
for s in 0.5 0.75 1.0 1.5 2.0; do for e in 1.0 0.5; do
  echo "sigma=$s emission=$e $($P benchmarks/track_ablation.py --root runs/tune12 --mode first --rows "temporal + offset (no dominant motion)" --no-baselines --set motion_sigma=$s emission_weight=$e --out runs/sweep/s$s-e$e 2>/dev/null | grep AJ)"
done; done
$P benchmarks/track_ablation.py --root runs/tune12 --mode first --rows "temporal + offset (no dominant motion)" --out runs/sweep/baselines 2>/dev/null | grep AJ
