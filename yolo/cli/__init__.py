"""Command-line entry points: argument parsers and ``main(argv) -> exit code`` for each tool."""
