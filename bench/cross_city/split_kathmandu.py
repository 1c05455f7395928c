"""Split Kathmandu by area (tile x address at zoom 21): a western part for fine-tuning (~20 tiles), the
eastern part for scoring; a tile whose footprint straddles the cut goes to neither."""

import collections
import glob
import os
import re

K = "/work/shared/data/kathmandu/images"
tiles = []
for f in sorted(glob.glob(f"{K}/*.tif")):
    x, y, z = map(int, re.match(r"OAM-(\d+)-(\d+)-(\d+)", os.path.basename(f)).groups())
    s = 2 ** (21 - z)
    tiles.append((x * s, (x + 1) * s, f))
cuts = sorted({a for a, _, _ in tiles} | {b for _, b, _ in tiles})


def split(t):
    return [f for a, b, f in tiles if b <= t], [f for a, b, f in tiles if a >= t]


best = min(cuts, key=lambda t: abs(len(split(t)[0]) - 20))
west, east = split(best)
print("cut x21 =", best, "west", len(west), "east", len(east), "dropped", len(tiles) - len(west) - len(east))
print(collections.Counter(f[-6:-4] for f in west), collections.Counter(f[-6:-4] for f in east))
for part, files in (("west", west), ("east", east)):
    for sub in ("images", "masks"):
        os.makedirs(f"/tmp/exp/kathmandu_{part}/{sub}", exist_ok=True)
    for f in files:
        n = os.path.basename(f)
        for sub, src in (("images", f), ("masks", f"/tmp/exp/kathmandu/masks/{n}")):
            dst = f"/tmp/exp/kathmandu_{part}/{sub}/{n}"
            if not os.path.exists(dst):
                os.symlink(src, dst)
