"""One module per ``glare`` subcommand (see :mod:`glare_core.cli`)."""
