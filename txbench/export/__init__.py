"""A run's results in other tools' formats.

* :mod:`txbench.export.pytest_benchmark` — pytest-benchmark JSON (no torch import);
  also the benchmark ids and ``extra_info`` the ``pytest --txbench-suite`` plugin uses.
* :mod:`txbench.export.tensorboard` — a TensorBoard log directory (imports torch's
  ``SummaryWriter`` only when writing).

The run's own Parquet files are written and read by :mod:`txbench.store`.
Importing this package imports neither submodule.
"""
