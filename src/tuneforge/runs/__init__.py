"""The run folder contract: every command reads and writes one self-describing folder per run."""
