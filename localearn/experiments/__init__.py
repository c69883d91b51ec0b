"""The command line and its presets: ``python -m localearn.experiments --help``."""
