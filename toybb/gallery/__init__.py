"""The figure gallery (`toybb figures --out figures/ [--scale cpu|paper] [--only NAME,...] [--runs DIR]`).

`registry` maps a figure name to the function that draws it from run folders trained on demand (cached
under `--runs`, so a rerun only redraws); `configs` holds the runs of each scale; one module per figure
family registers its figures (imported here in the gallery's order).

Scales: `cpu` (minutes on 2 cores) and `paper` (SPEC §2: d 256, sequence 256, batch 512, 10k steps,
4 seeds; meant for a GPU).
"""

from toybb.gallery import toy, theory, circuit, probes, longctx, pretrain  # noqa: F401 (they register in this order)
from toybb.gallery.configs import (SCALES, base_config, small_config, theory_trained_configs,  # noqa: F401
                                   variant_configs)
from toybb.gallery.registry import FIGURES, Figure, FigureContext, make_figures, register_figure  # noqa: F401
