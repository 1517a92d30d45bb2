#!/usr/bin/env python3
"""The pixelize benchmark (../shared/bench/pixelize/bench.py) with harder degradations,
to check that pixelgen is not tuned to one: per-axis scales (anisotropy) and a lossy
JPEG round trip of the degraded input. Same tools, same scoring.

    py=$(../shared/bench/pixelize/setup.sh)
    $py pixelgen-build/benches/pixelize_variants.py --aniso 0.03 --jpeg 85 --pixelgen target/release/cargo-pixelgen

Side-by-side benchmark of the pixelize stage: pixelgen against three public tools.

Ground truth: ai2pixelart's procedural sprites (a third party's generator).
Degradation: ai2pixelart.corrupt (non-integer upscale, sub-cell phase, bilinear,
blur, noise), plus a mild colour cast, the way diffusion output looks.
Each tool is told the true target size (pixelgen knows it from the manifest;
peers get their own equivalent hint), then scored by ai2pixelart.metrics.evaluate.

usage: bench.py [--seed S] [--n N] [--pixelgen PATH_TO_cargo-pixelgen] [--tools a,b,c]
"""
import argparse, json, os, subprocess, sys, tempfile, time, glob
import numpy as np
from PIL import Image
from ai2pixelart.corrupt import corrupt
from ai2pixelart.metrics import evaluate

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--n", type=int, default=40)
ap.add_argument("--pixelgen", default=None)
ap.add_argument("--tools", default="pixelgen,ai2pixelart,unfake,ppa")
ap.add_argument("--keep", default=None)
ap.add_argument("--aniso", type=float, default=0.0, help="y scale = x scale * (1 + U(-A, A))")
ap.add_argument("--jpeg", type=int, default=0, help="JPEG quality of a lossy round trip of the input (0: none)")
ap.add_argument("--track", default="A", help="A: no colour cast, no palette hint; B: colour cast, GT palette given as a .hex file")
a = ap.parse_args()
BIN = os.path.dirname(sys.executable)
work = a.keep or tempfile.mkdtemp(prefix="pxbench-")
gt_dir, in_dir = f"{work}/gt", f"{work}/in"
os.makedirs(in_dir, exist_ok=True)
subprocess.run([f"{BIN}/ai2pixelart", "data", "sprites", "-o", gt_dir, "-n", str(a.n), "--seed", str(a.seed)],
               check=True, capture_output=True)
rng = np.random.default_rng(a.seed)
cases = []
for f in sorted(glob.glob(f"{gt_dir}/*.png"))[: a.n]:
    gt = np.asarray(Image.open(f).convert("RGB"))
    scale = float(rng.uniform(4.0, 11.0))
    phase = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    sc = (scale * (1 + float(rng.uniform(-a.aniso, a.aniso))), scale) if a.aniso else scale
    big = corrupt(gt, scale=sc, phase=phase, interp="bilinear",
                  blur=float(rng.uniform(0.3, 1.0)), noise=float(rng.uniform(1.5, 5.0)),
                  seed=int(rng.integers(1 << 31))).astype(np.float64)
    gain, off = rng.uniform(0.96, 1.04, size=3), rng.uniform(-4, 4, size=3)
    if a.track == "B":
        big = np.clip(big * gain + off, 0, 255)
    name = os.path.basename(f)
    cols = np.unique(gt.reshape(-1, 3), axis=0)
    with open(f"{in_dir}/{name}.hex", "w") as fh:
        fh.write("".join("%02x%02x%02x\n" % tuple(c) for c in cols))
    img = Image.fromarray(big.round().astype(np.uint8))
    if a.jpeg:
        import io
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=a.jpeg)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    img.save(f"{in_dir}/{name}")
    cases.append((name, gt, scale))

def cmd(tool, src, dst, gt, scale):
    h, w = gt.shape[:2]
    pal = src + ".hex"
    if tool == "pixelgen":
        c = [a.pixelgen, "pixelgen", "pixelize", src, "--size", f"{w}x{h}", "-o", dst]
        return c + (["--palette", pal] if a.track == "B" else [])
    if tool == "ai2pixelart":
        c = [f"{BIN}/ai2pixelart", "clean", src, "-o", dst, "--pitch", f"{scale:.4f}"]
        return c + (["--palette", pal] if a.track == "B" else [])
    if tool == "unfake":
        c = [f"{BIN}/unfake", src, "-o", dst, "-s", str(int(round(scale))), "-q"]
        return c + (["--palette", pal] if a.track == "B" else [])
    if tool == "ppa":
        return [f"{BIN}/ppa", src, "-o", dst, "-w", str(int(round(scale)))]
    raise SystemExit(tool)

rows = {}
for tool in a.tools.split(","):
    if tool == "pixelgen" and not a.pixelgen:
        continue
    out_dir = f"{work}/out-{tool}"
    os.makedirs(out_dir, exist_ok=True)
    res = dict(n=0, size_ok=0, exact=0.0, tolerant=0.0, detail=[], errors=0, secs=0.0, exact_rs=0.0)
    for name, gt, scale in cases:
        dst = f"{out_dir}/{name}"
        t = time.perf_counter()
        p = subprocess.run(cmd(tool, f"{in_dir}/{name}", dst, gt, scale), capture_output=True, text=True)
        res["secs"] += time.perf_counter() - t
        res["n"] += 1
        if p.returncode != 0 or not os.path.exists(dst):
            res["errors"] += 1
            continue
        pred = np.asarray(Image.open(dst).convert("RGB"))
        ev = evaluate(pred, gt)
        if not ev["size_match"]:
            rs = np.asarray(Image.fromarray(pred).resize((gt.shape[1], gt.shape[0]), Image.NEAREST))
            res["exact_rs"] += evaluate(rs, gt)["cells"]["exact"]
        if ev["size_match"]:
            res["exact_rs"] += ev["cells"]["exact"]
            res["size_ok"] += 1
            res["exact"] += ev["cells"]["exact"]
            res["tolerant"] += ev["cells"]["tolerant"]
            r = ev["details"]["rate"]
            if r == r:
                res["detail"].append(r)
    n = max(res["n"], 1)
    rows[tool] = dict(size_ok=res["size_ok"] / n, exact=res["exact"] / n, tolerant=res["tolerant"] / n,
                      detail=float(np.mean(res["detail"])) if res["detail"] else float("nan"),
                      errors=res["errors"], ms_per_image=1000 * res["secs"] / n, exact_resized=res["exact_rs"] / n)
print(f"# corpus: {len(cases)} ai2pixelart sprites, seed {a.seed}, track {a.track}, aniso {a.aniso}, jpeg {a.jpeg}, work dir {work}")
print(f"{'tool':12} {'size_ok':>8} {'exact':>7} {'tolerant':>9} {'detail':>7} {'exact_rs':>8} {'errors':>6} {'ms/img':>8}")
for t, r in rows.items():
    print(f"{t:12} {r['size_ok']:8.3f} {r['exact']:7.3f} {r['tolerant']:9.3f} {r['detail']:7.3f} {r['exact_resized']:8.3f} {r['errors']:6d} {r['ms_per_image']:8.0f}")
print(json.dumps(rows))
