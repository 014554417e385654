"""The ``gpuflow`` command: a safe expression parser and the subcommands."""
