"""``python -m imagefleet``, the same as the ``imagefleet`` script."""
from imagefleet.cli import main

main()
