"""The performance benchmark (docs/performance.md): ``python -m bdunlearn.bench`` (``--quick``).

:mod:`.harness` measures and prints the figures; :mod:`.baselines` holds the training
loops the engine is compared with (a bare loop, a conventional per-sample DataLoader and
the BAU authors' Fashion-MNIST pipeline).
"""

from .harness import Row, Settings, format_table, machine_info, main, run_benchmark, write_csv

__all__ = ["Row", "Settings", "format_table", "machine_info", "main", "run_benchmark",
           "write_csv"]
