"""``voxlink bench``: the paper's comparison (Fig. 8, :mod:`voxlink.bench.accuracy`) and run times
(Tab. III, :mod:`voxlink.bench.speed`)."""
