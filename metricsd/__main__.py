"""``python -m metricsd`` is the ``metricsd`` command."""

from metricsd.cli import main

main()
