"""``python -m mednns`` runs the command line."""

from mednns.cli import main

main()
