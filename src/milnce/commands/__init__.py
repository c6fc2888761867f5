"""Command groups of the milnce CLI (each has register(subparsers))."""
