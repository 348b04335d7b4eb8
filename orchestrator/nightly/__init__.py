"""The nightly: a matrix of runs or hunts (`matrix`, `tasks`), spread over workers or a
Dask cluster (`dask_engine`), merged into the results directory (`merge`), read back
with care (`config_check`), compared over nights (`trend`) and told to CI (`junit`).
"""
