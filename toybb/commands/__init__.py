"""Command modules of `toybb` (listed by `toybb.cli`): each parses its subcommand's flags, checks them, calls
library functions and prints. The long-context, LLM, probe and theory commands live in the `cli` module of
their own folder."""
