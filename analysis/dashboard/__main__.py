"""`python -m analysis.dashboard`: see analysis/dashboard/cli.py."""

from analysis.dashboard.cli import main

main()
