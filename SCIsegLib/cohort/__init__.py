"""``sciseg run``: the whole pipeline over a cohort, one Dask task per scan.

Files: :mod:`discovery` (which scans, where their outputs go), :mod:`outputs` (the per-scan output set,
its completion marker, resume checks, publishing whole), :mod:`task` (what a worker does for one scan),
:mod:`measures` (per-scan numbers for the cohort table), :mod:`corrections` (measured on a rater's correction or
the model's masks), :mod:`plausibility` (values no cord can have, flagged), :mod:`tables` (cohort tables, run summary),
:mod:`cluster` (LocalCluster, an existing scheduler, SLURM), :mod:`run` (the driver).
"""
